//! `BoxError`: what can go wrong making, reaching or ending a box.

/// A failure of a backend or of boxd.
#[derive(Debug, thiserror::Error)]
pub enum BoxError {
    /// The box id is not 1-64 characters of `[a-z0-9-]`.
    #[error("`{0}` is not a box id")]
    BadId(String),
    /// The host cannot run boxes of this kind (a missing program, no cgroup controller…).
    #[error("this host cannot run boxes: {0}")]
    Unsupported(String),
    /// The box does not exist.
    #[error("no box `{0}`")]
    NotFound(String),
    /// The box did not come up.
    #[error("the box did not start: {0}")]
    Start(String),
    /// boxd answered with an error.
    #[error("boxd refused: {code}: {message}")]
    Boxd {
        /// HTTP status boxd answered with.
        status: u16,
        /// boxd's stable error code.
        code: String,
        /// boxd's sentence.
        message: String,
    },
    /// boxd could not be reached or its answer could not be read.
    #[error("boxd is unreachable: {0}")]
    Unreachable(String),
    /// A host operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl BoxError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BoxError {
        let context = context.into();
        move |source| BoxError::Io { context, source }
    }
}
