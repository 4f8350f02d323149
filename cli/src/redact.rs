//! Keeping secrets out of everything `weir` prints.
//!
//! Secret values come from the job's `WITH` options (keys such as
//! `s3.secret_access_key`, `password`, `token`) and from the environment
//! (variables whose names say they hold secrets). Any text `weir` prints
//! (errors, progress, plans) goes through [`Redactor::scrub`].

use weir_sql::catalog::is_secret_key;

/// Replaces known secret values in text.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor for the environment's secrets, and the credentials in
    /// URLs on the command line (`weir checkpoint inspect s3://u:p@b/ck`).
    pub fn from_env() -> Self {
        let mut r = Redactor::default();
        for arg in std::env::args().skip(1) {
            // `--cluster user:password@host:port` is a scheme-less one.
            for s in weir_sql::secrets::value_secret_values(&arg, true) {
                r.add(s);
            }
        }
        for (k, v) in std::env::vars() {
            if is_secret_key(&k) {
                r.add(v);
            } else {
                // A credential in a URL (`AWS_ENDPOINT=http://u:p@host`).
                for s in weir_sql::secrets::value_secret_values(&v, false) {
                    r.add(s);
                }
            }
        }
        r
    }

    /// Also redact `secret`. Very short values are skipped: replacing every
    /// "1" in a message would hide more than it protects.
    pub fn add(&mut self, secret: String) {
        if secret.len() >= 4 && !self.secrets.contains(&secret) {
            self.secrets.push(secret);
        }
    }

    /// Whether the text holds a known secret.
    pub fn finds_secret(&self, text: &str) -> bool {
        self.secrets.iter().any(|s| text.contains(s.as_str()))
    }

    /// The text with every known secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        weir_sql::secrets::scrub(text, &self.secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_known_secrets_only() {
        let mut r = Redactor::default();
        r.add("hunter2-long".into());
        r.add("ab".into());
        assert_eq!(r.scrub("key hunter2-long failed at ab"), "key *** failed at ab");
    }
}
