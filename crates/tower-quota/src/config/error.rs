//! Errors of a provider configuration.

use std::fmt;

/// A provider configuration that cannot be used, with the field and the
/// value at fault.
///
/// The message names the field's path and the value:
///
/// ```text
/// providers.openai.quotas[1].max_calls: 0 is invalid: max_calls must be at least 1
/// providers.openai.quotas[0].window: invalid value: string "1 fortnight", expected a duration (line 3, column 38)
/// line 3, column 10: key with no value, expected `=` (`max_wait 5`)
/// ```
///
/// The first form comes from checking values, the second from reading a
/// field (wrong type, unknown field, a duration such as `"1 fortnight"`),
/// the third from TOML syntax, where the line in question is quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    message: String,
    location: Option<(usize, usize)>,
    line: Option<String>,
}

impl ConfigError {
    /// A value that was read but makes no sense: `value` is how it is shown.
    pub(super) fn invalid(
        path: String,
        value: impl fmt::Display,
        reason: impl fmt::Display,
    ) -> Self {
        ConfigError {
            path,
            message: format!("{value} is invalid: {reason}"),
            location: None,
            line: None,
        }
    }

    /// An error of the TOML reader, at `path` (empty when the document did
    /// not parse), located in `source`.
    pub(super) fn toml(path: String, error: &toml::de::Error, source: &str) -> Self {
        let mut location = None;
        let mut line = None;
        if let Some(span) = error.span() {
            let start = span.start.min(source.len());
            let before = &source[..start];
            let line_number = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |index| index + 1);
            let column = source[line_start..start].chars().count() + 1;
            location = Some((line_number, column));
            // The line is quoted only for syntax errors, which have no path
            // to name the field.
            if path.is_empty() {
                let text = source[line_start..].lines().next().unwrap_or("").trim();
                line = (!text.is_empty()).then(|| text.to_owned());
            }
        }
        ConfigError {
            path,
            message: error.message().trim().to_owned(),
            location,
            line,
        }
    }

    /// The path of the field at fault, such as
    /// `providers.openai.quotas[1].max_calls`; empty for a TOML syntax error.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, naming the value.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The line and column (from 1) in the TOML source, when known.
    pub fn location(&self) -> Option<(usize, usize)> {
        self.location
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.location) {
            (false, Some((line, column))) => write!(
                f,
                "{}: {} (line {line}, column {column})",
                self.path, self.message
            )?,
            (false, None) => write!(f, "{}: {}", self.path, self.message)?,
            (true, Some((line, column))) => {
                write!(f, "line {line}, column {column}: {}", self.message)?
            }
            (true, None) => f.write_str(&self.message)?,
        }
        if let Some(line) = &self.line {
            write!(f, " (`{line}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
