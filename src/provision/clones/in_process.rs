//! Prepared clones kept in this process: on an external server, where the
//! crate leaves no table; its clones are dropped when the process stops.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use crate::error::Result;
use crate::provision::clones::{Store, Taken};
use crate::provision::database::Step;
use crate::support::sync::lock;

/// Clone names per template, oldest first.
#[derive(Default)]
pub(crate) struct InProcess {
    ready: Mutex<HashMap<String, VecDeque<String>>>,
}

impl Store for InProcess {
    fn take<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<Option<Taken>>> {
        let taken = lock(&self.ready)
            .get_mut(template)
            .and_then(VecDeque::pop_front);
        Box::pin(async move { Ok(taken.map(|name| Taken { name, left: None })) })
    }

    fn ready<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<usize>> {
        let n = lock(&self.ready).get(template).map_or(0, VecDeque::len);
        Box::pin(async move { Ok(n) })
    }

    fn put<'a>(&'a self, template: &'a str, name: String) -> BoxFuture<'a, Result<()>> {
        lock(&self.ready)
            .entry(template.to_string())
            .or_default()
            .push_back(name);
        Box::pin(async { Ok(()) })
    }

    fn cloned_on_demand<'a>(&'a self, _template: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn cap_demand(&self, _caps: Vec<(String, usize)>) -> BoxFuture<'_, ()> {
        // Nobody prepares clones between runs on an external server.
        Box::pin(async {})
    }

    fn hand_over(&self, queued: Vec<Vec<Step>>) -> BoxFuture<'_, Vec<Vec<Step>>> {
        // Nobody to hand them to: the process drops them itself.
        Box::pin(async move { queued })
    }

    fn take_own(&self) -> Vec<String> {
        lock(&self.ready).drain().flat_map(|(_, q)| q).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_come_back_oldest_first_and_go_at_the_stop() {
        let store = InProcess::default();
        store.put("t", "a".into()).await.unwrap();
        store.put("t", "b".into()).await.unwrap();
        assert_eq!(store.ready("t").await.unwrap(), 2);
        assert_eq!(
            store.take("t").await.unwrap(),
            Some(Taken {
                name: "a".into(),
                left: None
            })
        );
        assert_eq!(store.take_own(), ["b".to_string()]);
        assert_eq!(store.take("t").await.unwrap(), None);
    }
}
