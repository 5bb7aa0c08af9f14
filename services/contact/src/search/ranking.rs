//! How well a stored term matches a query word, and how matches add up to a score.

/// How a query word matched a term.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct TermMatch {
    /// 0 ..= 1: 1 for the same word, less for a prefix or a typo.
    pub quality: f64,
    /// Matched only within a typo or two, not as the word or a prefix of it.
    pub typo: bool,
}

/// The optimal-string-alignment distance, giving up above `limit`.
fn edit_distance(a: &str, b: &str, limit: usize) -> Option<usize> {
    let distance = strsim::osa_distance(a, b);
    (distance <= limit).then_some(distance)
}

/// Typos tolerated in a word of this many characters.
pub fn typo_budget(chars: usize) -> usize {
    match chars {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    }
}

/// How `term` matches the query word `word` (both folded), if at all: exactly, as a
/// prefix (the person is still typing), or within a typo or two.
pub fn match_term(word: &str, term: &str) -> Option<TermMatch> {
    if word == term {
        return Some(TermMatch {
            quality: 1.0,
            typo: false,
        });
    }
    let word_chars = word.chars().count();
    if term.starts_with(word) && word_chars >= 2 {
        // Longer completions of a short prefix are weaker evidence.
        let term_chars = term.chars().count().max(1);
        let coverage = word_chars as f64 / term_chars as f64;
        return Some(TermMatch {
            quality: 0.6 + 0.3 * coverage,
            typo: false,
        });
    }
    let budget = typo_budget(word_chars);
    if budget == 0 {
        return None;
    }
    if let Some(distance) = edit_distance(word, term, budget) {
        return Some(TermMatch {
            quality: 0.75 - 0.2 * distance as f64,
            typo: true,
        });
    }
    // A typo within a prefix: "jonhs" for "jonhson"… compare the term's start.
    let head: String = term.chars().take(word_chars).collect();
    let term_chars = term.chars().count();
    if term_chars > word_chars
        && term_chars <= word_chars + PREFIX_TYPO_REACH
        && let Some(distance) = edit_distance(word, &head, budget.min(1))
    {
        return Some(TermMatch {
            quality: 0.5 - 0.1 * distance as f64,
            typo: true,
        });
    }
    None
}

/// How much longer than the word a completion may be to match with a typo in the
/// typed part ("jonhs" for "johnson"): longer ones are other words that happen to
/// start alike, and bounding them lets the vocabulary lookup skip them by length.
pub const PREFIX_TYPO_REACH: usize = 4;

/// The characters a typo-tolerant lookup may assume the word starts with: typos in
/// the first characters are rare, and the prefix keeps the vocabulary scan small.
pub fn anchor(word: &str) -> String {
    let take = if word.chars().count() >= 5 { 2 } else { 1 };
    word.chars().take(take).collect()
}

/// The first string after every string starting with `prefix` (for a range scan).
pub fn prefix_end(prefix: &str) -> String {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return chars.into_iter().collect();
        }
    }
    String::from(char::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_prefix_and_typos() {
        assert_eq!(match_term("anna", "anna").map(|m| m.quality), Some(1.0));
        assert!(match_term("mül", "mül").is_some());
        let prefix = match_term("mue", "mueller").expect("prefix");
        assert!(prefix.quality < 1.0 && prefix.quality > 0.6);
        assert!(match_term("jonh", "john").is_some(), "transposition");
        assert!(
            match_term("schmitt", "schmidt").is_some(),
            "one substitution"
        );
        assert!(
            match_term("bob", "rob").is_none(),
            "short words need exactness"
        );
        assert!(match_term("anna", "berta").is_none());
        assert!(match_term("jonhs", "johnson").is_some(), "typo in a prefix");
        assert!(
            match_term("jonhs", "johnsonville").is_none(),
            "a typo in the start of a much longer word"
        );
    }

    #[test]
    fn exact_beats_prefix_beats_typo() {
        let exact = match_term("meier", "meier").unwrap().quality;
        let prefix = match_term("meier", "meierhofer").unwrap().quality;
        let typo = match_term("meier", "meyer").unwrap().quality;
        assert!(exact > prefix && prefix > typo, "{exact} {prefix} {typo}");
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end("ab"), "ac");
        assert_eq!(anchor("schmidt"), "sc");
        assert_eq!(anchor("bob"), "b");
    }
}
