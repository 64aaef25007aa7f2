use std::fmt;
use std::path::{Path, PathBuf};

/// A config that cannot be used, with the place that is wrong: `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigError {
    /// An error at byte offset `offset` of `text`.
    pub fn at(file: &Path, text: &str, offset: usize, message: String) -> ConfigError {
        let (line, column) = line_col(text, offset);
        ConfigError { file: file.to_path_buf(), line, column, message }
    }

    /// An error at a known line and column.
    pub fn at_line(file: &Path, line: usize, column: usize, message: String) -> ConfigError {
        ConfigError { file: file.to_path_buf(), line, column, message }
    }

    pub fn io(file: &Path, message: String) -> ConfigError {
        ConfigError { file: file.to_path_buf(), line: 0, column: 0, message }
    }

    /// `file:line:column`.
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}", self.location(), self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn positions_are_one_based() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 11), (2, 6));
    }
}
