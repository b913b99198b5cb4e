//! Two-way writes through `$batch`, against the simulator.

use crate::providers::graph::{WriteOp, WriteResult};
use crate::providers::ProviderError;

use super::*;

#[tokio::test]
async fn writes_go_through_batch_in_chunks_of_twenty_with_if_match_and_conflicts() {
    let m = mailbox_with(6).await;
    let roots = m.ids_in(&m.root);
    let (ok, stale, throttled, gone) = (
        roots[0].clone(),
        roots[1].clone(),
        roots[2].clone(),
        m.ids_in(&m.kids)[0].clone(),
    );
    let etag_of = |id: &str| {
        m.contacts()
            .into_iter()
            .find(|(i, _, _)| i == id)
            .and_then(|(_, _, c)| c["@odata.etag"].as_str().map(String::from))
    };
    // The throttled contact's part is throttled once, inside its `$batch`.
    m.script(
        Script::on(&format!("/me/contacts/{}", enc(&throttled)))
            .method("PATCH")
            .times(1)
            .json(429, json!({"error": {"code": "ApplicationThrottled"}}))
            .header("Retry-After", "0.01"),
    );
    let mut ops: Vec<WriteOp> = (0..21)
        .map(|i| WriteOp::Create {
            fields: sample_fields(if i == 0 { 4 } else { 1 }, 1),
        })
        .collect();
    let upd = |id: &str, etag: Option<String>| WriteOp::Update {
        id: id.into(),
        etag,
        fields: sample_fields(1, 1),
        changed: vec!["job_title".into()],
    };
    ops.extend([
        upd(&ok, etag_of(&ok)),
        upd(&stale, Some("W/\"EQAAABYAAACstale\"".into())),
        upd(&throttled, etag_of(&throttled)),
    ]);
    ops.push(WriteOp::Delete {
        id: "AAMkmissing=".into(),
    });
    ops.push(WriteOp::Delete { id: gone.clone() });

    let results = m.client.write(&ops).await;

    assert_eq!(results.len(), ops.len());
    match &results[0] {
        WriteResult::Created {
            id, etag, dropped, ..
        } => {
            assert!(!id.is_empty());
            assert!(etag.as_deref().is_some_and(|e| e.starts_with("W/\"")));
            assert_eq!(dropped.emails, vec!["g3@contoso.com"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&results[20], WriteResult::Created { id, .. } if !id.is_empty()));
    assert!(matches!(
        &results[21],
        WriteResult::Updated { etag: Some(_), .. }
    ));
    assert_eq!(results[22], WriteResult::Conflict);
    assert!(matches!(&results[23], WriteResult::Updated { .. }));
    assert_eq!(results[24], WriteResult::NotFound);
    assert_eq!(results[25], WriteResult::Deleted);

    let parts = m.sim.graph_batch_log(OLGA);
    let mut sizes: Vec<usize> = Vec::new();
    for p in &parts {
        let b = p.batch as usize;
        if sizes.len() < b {
            sizes.resize(b, 0);
        }
        sizes[b - 1] += 1;
    }
    assert_eq!(
        sizes,
        vec![20, 6, 1],
        "20, then the rest, then the throttled item again"
    );
    for q in &parts {
        assert!(q.headers["Prefer"].contains("IdType=\"ImmutableId\""));
        if q.method == "PATCH" {
            assert!(q.headers.contains_key("If-Match"));
            assert_eq!(q.headers["Content-Type"], "application/json");
            let body = q.body.as_ref().and_then(Value::as_object).expect("a body");
            assert_eq!(body.keys().collect::<Vec<_>>(), vec!["jobTitle"]);
        }
    }
    let throttled_sent = parts
        .iter()
        .filter(|p| p.url == format!("/me/contacts/{}", enc(&throttled)))
        .count();
    assert_eq!(throttled_sent, 2);
    m.assert_prefer_on_every_request();
}

#[tokio::test]
async fn a_batch_with_creates_is_not_sent_twice_after_a_server_error() {
    let m = mailbox_with(0).await;
    m.script(graph_error(
        "/v1.0/$batch",
        500,
        "InternalServerError",
        "An internal server error occurred.",
    ));
    let err = m.client.create(&sample_fields(1, 1)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    assert_eq!(m.graph_requests().len(), 1);
    // Deletes are safe to repeat.
    let err = m.client.delete("x").await.unwrap_err();
    assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    assert_eq!(
        m.graph_requests().len() as u32,
        1 + RetryPolicy::fast().max_attempts
    );
}
