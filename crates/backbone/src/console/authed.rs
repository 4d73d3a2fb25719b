//! [`Authed`]: what a console page knows of the operator it is rendered
//! for. Its own file so that the page shell (`layout`) and logging in
//! (`auth`, which extracts it and renders the login page with the shell)
//! both depend on it, and not on each other.

use super::session::Session;

/// A request with a valid session (the extractor is in `auth`).
pub struct Authed {
    pub session: Session,
    /// The CSRF token the page's forms carry.
    pub csrf: String,
    /// The flash message the previous action left, if any.
    pub flash: Option<String>,
}
