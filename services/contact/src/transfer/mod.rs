//! Bulk transfer: client-streaming import and server-streaming export of contacts.
//!
//! `rows` holds the rules (no I/O), `import` one import's batches, `digests` what an
//! import remembers of its rows, `store` their persistence, `export` the chunked export.

pub mod digests;
pub mod export;
pub mod import;
pub mod rows;
pub mod store;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_proto::contact::*;

use crate::context::Context;
use crate::grpc::BoxStream;

use import::Importer;
use rows::MAX_ROWS_PER_MESSAGE;

pub struct TransferApi {
    ctx: Context,
}

impl TransferApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn import_contacts(
        &self,
        request: Request<Streaming<ImportContactsRequest>>,
    ) -> Result<Response<BoxStream<ImportContactsResponse>>, Status> {
        let caller = Caller::from_request(&request)?;
        let mut stream = request.into_inner();
        // The first message is read here, so that bad options fail the call itself.
        let first = stream.message().await?.ok_or_else(|| {
            ApiError::invalid("options", "the first message must carry the import options")
        })?;
        let plan = rows::plan(first.options)?;
        check_row_count(first.rows.len())?;
        let policy = crate::policy::load(&self.ctx.db, &caller.tenant).await?;
        let rules = if plan.mode == ImportMode::UpdateOnly {
            DuplicateRules::default()
        } else {
            policy.rules
        };
        tracing::info!(
            tenant = %caller.tenant,
            mode = plan.mode.as_str_name(),
            dry_run = plan.dry_run,
            "import started"
        );
        let mut plan = plan;
        plan.phone_region = policy.phone_region;
        let importer = Importer::new(self.ctx.clone(), caller, plan, rules);
        // Two messages of slack: the importer works ahead by at most one batch.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(run_import(importer, stream, first.rows, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    pub async fn export_contacts(
        &self,
        request: Request<ExportContactsRequest>,
    ) -> Result<Response<BoxStream<ExportContactsResponse>>, Status> {
        let caller = Caller::from_request(&request)?;
        let export = export::Export::new(
            self.ctx.contacts.clone(),
            self.ctx.tokens.clone(),
            caller.tenant.clone(),
            request.get_ref(),
        )?;
        // The next chunk is read only when the client has taken the previous one, and
        // a client that goes away drops the stream, which ends the loop.
        let stream = futures::stream::unfold(Some(export), |state| async move {
            let mut export = state?;
            match export.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(export))),
                Ok(None) => None,
                Err(err) => Some((Err(Status::from(err)), None)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn check_row_count(rows: usize) -> Result<(), ApiError> {
    if rows > MAX_ROWS_PER_MESSAGE {
        return Err(ApiError::invalid(
            "rows",
            format!("at most {MAX_ROWS_PER_MESSAGE} rows per message"),
        ));
    }
    Ok(())
}

/// Reads the rows, writes them batch by batch, and streams the results back. Rows
/// of a batch that has not committed when the client's stream breaks are not stored.
async fn run_import(
    mut importer: Importer,
    mut stream: Streaming<ImportContactsRequest>,
    mut pending: Vec<ImportRow>,
    tx: mpsc::Sender<Result<ImportContactsResponse, Status>>,
) {
    let mut ended = false;
    loop {
        while pending.len() < MAX_ROWS_PER_MESSAGE && !ended {
            match stream.message().await {
                Ok(Some(message)) => {
                    let check = if message.options.is_some() {
                        Err(ApiError::invalid(
                            "options",
                            "only the first message may carry options",
                        ))
                    } else {
                        check_row_count(message.rows.len())
                    };
                    if let Err(err) = check {
                        let _ = tx.send(Err(err.into())).await;
                        return;
                    }
                    pending.extend(message.rows);
                }
                Ok(None) => ended = true,
                Err(status) => {
                    // The client's stream broke: what was not committed is dropped.
                    tracing::info!(
                        code = ?status.code(),
                        rows_received = importer.summary.rows_received,
                        "import stream broke; uncommitted rows dropped"
                    );
                    return;
                }
            }
        }
        if !pending.is_empty() {
            let batch = std::mem::take(&mut pending);
            let results = match importer.batch(batch, || !tx.is_closed()).await {
                Ok(results) => results,
                Err(err) => {
                    tracing::warn!(reason = err.reason(), "import batch failed");
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
            };
            let results: Vec<ImportRowResult> = if importer.plan().summary_only {
                results
                    .into_iter()
                    .filter(|r| r.outcome == ImportRowOutcome::Rejected as i32)
                    .collect()
            } else {
                results
            };
            if !results.is_empty()
                && tx
                    .send(Ok(ImportContactsResponse {
                        results,
                        summary: None,
                    }))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if ended {
            let summary = importer.finish();
            tracing::info!(
                rows_received = summary.rows_received,
                created = summary.created,
                updated = summary.updated,
                skipped_duplicate = summary.skipped_duplicate,
                rejected = summary.rejected,
                dry_run = summary.dry_run,
                "import finished"
            );
            let _ = tx
                .send(Ok(ImportContactsResponse {
                    results: Vec::new(),
                    summary: Some(summary),
                }))
                .await;
            return;
        }
    }
}
