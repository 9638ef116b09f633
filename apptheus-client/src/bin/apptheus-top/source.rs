//! Where apptheus-top reads the containers: the node's query socket (the default: each user
//! their own, no credentials), or the daemon's HTTP API (`--url`, for remote use).
use apptheus_api::Containers;
use apptheus_client::{http, query};

pub enum Source {
    Query(query::Client),
    Http(http::Client),
}

impl Source {
    /// The containers, as the daemon sees them now.
    pub fn fetch(&self) -> anyhow::Result<Containers> {
        Ok(match self {
            Source::Query(q) => q.containers(false)?,
            Source::Http(h) => h.fetch()?,
        })
    }

    /// What the view's title names.
    pub fn describe(&self) -> String {
        match self {
            Source::Query(q) => q.path().display().to_string(),
            Source::Http(h) => h.url().to_string(),
        }
    }
}
