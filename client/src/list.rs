//! Listing and batches: [`Client::list`], [`Client::list_all`] and [`Client::batch`] through one
//! node, [`Nodes::list`] and [`Nodes::batch`] with failover.

use kvapi::batch::{BATCH_PATH, BatchItem, BatchRequest, BatchResponse, BatchResult};
use kvapi::list::{LIST_PATH, ListPage};
use percent_encoding::percent_encode;

use crate::{Client, Error, KEY_ENCODE_SET, Nodes, parse_admin_json};

/// Options of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys that start with these bytes.
    pub prefix: Vec<u8>,
    /// Most keys per page (1..=1000); the node's default of 100 when `None`.
    pub limit: Option<u32>,
    /// Whether each key comes with its siblings and context.
    pub values: bool,
    /// Replicas that must answer per partition (`?r=`); the cluster's R when `None`.
    pub r: Option<u32>,
    /// Deadline of each page in milliseconds; the node default when `None`.
    pub timeout_ms: Option<u64>,
}

/// Quorums and deadline of a batch, applied to each of its items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOptions {
    /// Read quorum of every get (`?r=`).
    pub r: Option<u32>,
    /// Write quorum of every put and delete (`?w=`).
    pub w: Option<u32>,
    /// Deadline of the batch in milliseconds; the node default when `None`.
    pub timeout_ms: Option<u64>,
}

impl Client {
    /// One page of the keys under `opts.prefix`, from `cursor` (the previous page's) or the start.
    pub async fn list(&self, opts: &ListOptions, cursor: Option<&str>) -> Result<ListPage, Error> {
        let mut query = format!("prefix={}", percent_encode(&opts.prefix, KEY_ENCODE_SET));
        for (name, value) in [
            ("limit", opts.limit.map(u64::from)),
            ("r", opts.r.map(u64::from)),
            ("timeout_ms", opts.timeout_ms),
        ] {
            if let Some(value) = value {
                query.push_str(&format!("&{name}={value}"));
            }
        }
        if opts.values {
            query.push_str("&values=true");
        }
        if let Some(cursor) = cursor {
            query.push_str(&format!(
                "&cursor={}",
                percent_encode(cursor.as_bytes(), KEY_ENCODE_SET)
            ));
        }
        let route = format!("{LIST_PATH}?{query}");
        let timeout = self.request_timeout(opts.timeout_ms);
        let body = self
            .admin_with_timeout(reqwest::Method::GET, &route, None, timeout)
            .await?;
        parse_admin_json(LIST_PATH, &body)
    }

    /// Every page of the listing, following cursors, with `each` called on every page in turn; at
    /// most `max_pages` pages are read (an error past that).
    pub async fn list_all(
        &self,
        opts: &ListOptions,
        max_pages: usize,
        mut each: impl FnMut(ListPage),
    ) -> Result<(), Error> {
        let mut cursor: Option<String> = None;
        for _ in 0..max_pages {
            let mut page = self.list(opts, cursor.as_deref()).await?;
            let next = page.cursor.take();
            each(page);
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
        Err(Error::InvalidResponse(format!(
            "the listing did not end within {max_pages} pages"
        )))
    }

    /// Sends `items` as one batch: one result per item, in order.
    pub async fn batch(
        &self,
        items: Vec<BatchItem>,
        opts: &BatchOptions,
    ) -> Result<Vec<BatchResult>, Error> {
        let expected = items.len();
        let body = serde_json::to_vec(&BatchRequest { items })
            .map_err(|e| Error::InvalidResponse(format!("cannot encode the batch: {e}")))?;
        let mut query = String::new();
        for (name, value) in [
            ("r", opts.r.map(u64::from)),
            ("w", opts.w.map(u64::from)),
            ("timeout_ms", opts.timeout_ms),
        ] {
            if let Some(value) = value {
                query.push(if query.is_empty() { '?' } else { '&' });
                query.push_str(&format!("{name}={value}"));
            }
        }
        let route = format!("{BATCH_PATH}{query}");
        let timeout = self.request_timeout(opts.timeout_ms);
        let answer = self
            .admin_with_timeout(reqwest::Method::POST, &route, Some(body), timeout)
            .await?;
        let answer: BatchResponse = parse_admin_json(BATCH_PATH, &answer)?;
        if answer.results.len() != expected {
            return Err(Error::InvalidResponse(format!(
                "{} results for {expected} batch items",
                answer.results.len()
            )));
        }
        Ok(answer.results)
    }
}

impl Nodes {
    /// [`Client::list`] with failover: a page is a read, safe to ask another node for, and a
    /// cursor is valid on every node of the cluster.
    pub async fn list(&self, opts: &ListOptions, cursor: Option<&str>) -> Result<ListPage, Error> {
        self.with_failover(|c| async move { c.list(opts, cursor).await })
            .await
    }

    /// [`Client::batch`] with failover. As for [`Nodes::put`], a retried write item carries the
    /// same context, so a batch applied twice leaves equal siblings, never a lost write.
    pub async fn batch(
        &self,
        items: Vec<BatchItem>,
        opts: &BatchOptions,
    ) -> Result<Vec<BatchResult>, Error> {
        self.with_failover(|c| {
            let items = items.clone();
            async move { c.batch(items, opts).await }
        })
        .await
    }
}
