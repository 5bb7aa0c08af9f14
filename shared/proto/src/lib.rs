//! Generated code for the CRM contracts in `proto/`: messages, clients and servers.

// Generated code: its shape is prost's, not ours.
#[allow(clippy::all, clippy::pedantic)]
pub mod crm {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("crm.common.v1");
        }
    }
    pub mod contact {
        pub mod v1 {
            tonic::include_proto!("crm.contact.v1");
        }
    }
    pub mod pipeline {
        pub mod v1 {
            tonic::include_proto!("crm.pipeline.v1");
        }
    }
    pub mod ticket {
        pub mod v1 {
            tonic::include_proto!("crm.ticket.v1");
        }
    }
    pub mod analytics {
        pub mod v1 {
            tonic::include_proto!("crm.analytics.v1");
        }
    }
}

pub use crm::{analytics::v1 as analytics, common::v1 as common, contact::v1 as contact};
pub use crm::{pipeline::v1 as pipeline, ticket::v1 as ticket};

/// The encoded `FileDescriptorSet` of every CRM proto and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/crm_descriptor.bin"));
