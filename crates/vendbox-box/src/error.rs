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
    /// A file is bigger than the caller takes.
    #[error("the file is {size} bytes, more than the {limit} this call takes")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The most the call takes.
        limit: u64,
    },
    /// boxd could not be reached: the request never got to it.
    #[error("boxd is unreachable: {0}")]
    Unreachable(String),
    /// The request reached boxd, but its answer did not come back whole, in time and well formed
    /// (boxd may have acted on the request).
    #[error("boxd's answer was lost: {0}")]
    AnswerLost(String),
    /// An image cannot be built, imported, found or removed.
    #[error("{0}")]
    Image(String),
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
    /// Whether the failure shows that boxd did nothing with the request: it could not be
    /// reached, or it answered with a refusal. After any other failure it may have acted.
    pub fn request_not_acted_on(&self) -> bool {
        matches!(self, BoxError::Unreachable(_) | BoxError::Boxd { .. })
    }

    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BoxError {
        let context = context.into();
        move |source| BoxError::Io { context, source }
    }
}
