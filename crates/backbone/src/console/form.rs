//! Posted forms, read by hand (`application/x-www-form-urlencoded`): a
//! selection repeats its field (`id=1&id=2`), which serde's urlencoded
//! decoder does not take.

/// A form's fields in order; repeated names kept.
#[derive(Debug, Clone, Default)]
pub struct Fields(Vec<(String, String)>);

/// Bytes of a console form at most (a selection of ids and a reason).
pub const BODY_MAX: usize = 256 * 1024;

impl Fields {
    pub fn parse(body: &[u8]) -> Fields {
        Fields(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The first value of `name` exactly as sent (not trimmed, may be empty).
    pub fn raw(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Every value of `name` that is an id; `Err` names the first that is not.
    pub fn ids(&self, name: &str) -> Result<Vec<i64>, String> {
        self.all(name)
            .iter()
            .map(|v| v.parse::<i64>().map_err(|_| v.clone()))
            .collect()
    }
}

/// Where to go back to after an action: a console path given by the form,
/// never another site (`//host` or a scheme).
pub fn back_to(fields: &Fields, default: &str) -> String {
    match fields.get("back") {
        Some(b) if b.starts_with("/console") && !b.contains("//") && !b.contains('\\') => b,
        _ => default.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_fields_and_ids_are_read() {
        let f = Fields::parse(b"id=1&id=+2&reason=a%20b&id=&csrf=x");
        assert_eq!(f.ids("id"), Ok(vec![1, 2]));
        assert_eq!(f.get("reason").as_deref(), Some("a b"));
        assert_eq!(f.get("missing"), None);
        assert_eq!(Fields::parse(b"id=x").ids("id"), Err("x".to_string()));
    }

    #[test]
    fn back_stays_in_the_console() {
        let f = |b: &str| Fields::parse(format!("back={b}").as_bytes());
        assert_eq!(
            back_to(&f("/console/targets"), "/console"),
            "/console/targets"
        );
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/consoleX//a",
            "/x",
        ] {
            assert_eq!(back_to(&f(bad), "/console"), "/console", "{bad}");
        }
    }
}
