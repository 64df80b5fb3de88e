//! Secret values: a wrapper that never prints its contents, and a redactor
//! that scrubs known values out of any text before it is shown or stored.

use std::fmt;

/// A secret value. `Debug` and `Display` print `***`; only [`Secret::expose`]
/// gives the value, and only code that hands it to the service calls it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value, for the service's environment only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Read from config files as a plain string; still never printed.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replaces every known secret value in a text with `***`. Applied to command
/// output and error messages before they reach the user, logs or the store.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    values: Vec<Secret>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = Secret>) -> Self {
        // Values shorter than 4 bytes would turn ordinary words into `***`.
        let mut values: Vec<Secret> = values
            .into_iter()
            .filter(|s| s.expose().len() >= 4)
            .collect();
        // Longest first, so a value that contains another is scrubbed whole.
        values.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        Redactor { values }
    }

    /// A job's redactor: its secrets, and its environment values long
    /// enough to be credentials (8 bytes or more: shorter ones, like `true`
    /// or `prod`, would scrub ordinary words).
    pub fn for_job<'a>(
        secrets: impl IntoIterator<Item = &'a Secret>,
        env: impl IntoIterator<Item = &'a String>,
    ) -> Self {
        let env = env
            .into_iter()
            .filter(|v| v.len() >= 8)
            .map(|v| Secret::new(v.clone()));
        Redactor::new(secrets.into_iter().cloned().chain(env))
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.expose()) {
                out = out.replace(v.expose(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2-value");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }

    #[test]
    fn redactor_scrubs_longest_first() {
        let r = Redactor::new([
            Secret::new("abcd"),
            Secret::new("abcdefgh"),
            Secret::new("x"),
        ]);
        assert_eq!(r.redact("k=abcdefgh j=abcd x"), "k=*** j=*** x");
    }
}
