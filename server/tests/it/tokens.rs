//! Contract §2, client tokens at the edge: the algorithm, `nbf`, `aud` and `iss`,
//! the size limit, where the token is read from (the `bearer.<jwt>` WebSocket
//! subprotocol, the query, the `Authorization` header) and the JWT secret's length.

use base64::Engine;
use herald_shared::ServerFrame;
use serde_json::{Value, json};

use crate::common::{self, Client, Db, JWT_SECRET, Storage, refused, start, start_with};

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `claims` signed with the test nodes' secret, with `alg`.
fn signed(alg: jsonwebtoken::Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn hs256(claims: Value) -> String {
    signed(jsonwebtoken::Algorithm::HS256, &claims)
}

/// A token whose header names `alg`, with a signature no key made.
fn forged(alg: &str, claims: &Value) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(b"signature")
    )
}

/// The status and error text of an upgrade with `token` in the query.
async fn upgrade_refusal(s: &common::TestServer, token: &str) -> (u16, String) {
    let (code, body, _) = refused(&s.ws_url(&format!("?token={token}")), &[]).await;
    (code, body["error"].as_str().unwrap_or_default().to_owned())
}

async fn upgrade_with(
    s: &common::TestServer,
    query: &str,
    header: Option<&str>,
) -> Result<Client, u16> {
    upgrade_offering(s, query, None, header)
        .await
        .map(|(c, _)| c)
        .map_err(|(code, _)| code)
}

/// Only HS256 is accepted: `alg: none`, HS384 (even signed with the node's secret),
/// RS256 and others get 401 `algorithm must be HS256`; so do SSE streams.
#[tokio::test]
async fn only_hs256_tokens_are_accepted() {
    let s = start(Db::Sqlite).await;
    let claims = json!({"sub": "42", "exp": now_unix() + 60});
    let want = (
        401,
        "invalid token claims: algorithm must be HS256".to_owned(),
    );
    for alg in ["none", "RS256", "ES256", "HS512"] {
        assert_eq!(
            upgrade_refusal(&s, &forged(alg, &claims)).await,
            want,
            "{alg}"
        );
    }
    let hs384 = signed(jsonwebtoken::Algorithm::HS384, &claims);
    assert_eq!(upgrade_refusal(&s, &hs384).await, want, "HS384");
    let sse = common::api()
        .get(s.http(&format!(
            "/sse/notifications/?token={}",
            forged("none", &claims)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 401);
    let body: Value = sse.json().await.unwrap();
    assert_eq!(body["error"], want.1);
    upgrade_with(&s, &format!("?token={}", hs256(claims)), None)
        .await
        .expect("HS256 with the node's secret");
}

/// `nbf` in the future is refused (no leeway, like `exp`); `nbf` now is valid. A
/// missing `exp` is refused. With no audience or issuer configured, a token that
/// carries `aud` and `iss` is accepted.
#[tokio::test]
async fn nbf_exp_and_unconfigured_aud_iss() {
    let s = start(Db::Sqlite).await;
    let now = now_unix();
    let future = hs256(json!({"sub": "42", "exp": now + 60, "nbf": now + 30}));
    assert_eq!(
        upgrade_refusal(&s, &future).await,
        (401, "token not yet valid (nbf is in the future)".into())
    );
    let no_exp = hs256(json!({"sub": "42"}));
    let (code, error) = upgrade_refusal(&s, &no_exp).await;
    assert_eq!(code, 401);
    assert!(
        error.starts_with("invalid token claims: missing field `exp`"),
        "{error}"
    );
    for ok in [
        json!({"sub": "42", "exp": now + 60, "nbf": now}),
        json!({"sub": "42", "exp": now + 60, "aud": "anyone", "iss": "some-idp"}),
        json!({"sub": "42", "exp": now + 60, "aud": ["a", "b"]}),
    ] {
        let mut c = upgrade_with(&s, &format!("?token={}", hs256(ok.clone())), None)
            .await
            .unwrap_or_else(|code| panic!("{ok}: {code}"));
        assert!(matches!(c.frame().await, ServerFrame::Welcome { .. }));
    }
}

/// With `--jwt-audience` and `--jwt-issuer`, a token must carry both, matching;
/// the node's own tokens (`Herald::token`, `herald-server token`) do.
#[tokio::test]
async fn configured_audience_and_issuer_are_required() {
    let s = start_with(
        Db::Sqlite,
        &["--jwt-audience", "herald", "--jwt-issuer", "idp"],
    )
    .await;
    let exp = now_unix() + 60;
    for (claims, why) in [
        (
            json!({"sub": "42", "exp": exp, "iss": "idp"}),
            "missing `aud`",
        ),
        (
            json!({"sub": "42", "exp": exp, "aud": "herald"}),
            "missing `iss`",
        ),
        (
            json!({"sub": "42", "exp": exp, "aud": "other", "iss": "idp"}),
            "`aud` is not this node's audience",
        ),
        (
            json!({"sub": "42", "exp": exp, "aud": "herald", "iss": "other"}),
            "`iss` is not this node's issuer",
        ),
    ] {
        assert_eq!(
            upgrade_refusal(&s, &hs256(claims.clone())).await,
            (401, format!("invalid token claims: {why}")),
            "{claims}"
        );
    }
    let good = hs256(json!({"sub": "42", "exp": exp, "aud": "herald", "iss": "idp"}));
    upgrade_with(&s, &format!("?token={good}"), None)
        .await
        .expect("matching aud and iss");
    let own = s.token("42", &[], 60);
    upgrade_with(&s, &format!("?token={own}"), None)
        .await
        .expect("the node's own token");
}

/// A token over 8 KiB gets 401 with its size, in the query or the header, and the
/// node goes on serving.
#[tokio::test]
async fn huge_tokens_are_refused_with_their_size() {
    let s = start(Db::Sqlite).await;
    let huge = format!("{}.{}.x", "a".repeat(10_000), "b".repeat(10_000));
    let want = format!("token is {} bytes; the maximum is 8192", huge.len());
    assert_eq!(upgrade_refusal(&s, &huge).await, (401, want.clone()));
    let (code, body, _) = refused(
        &s.ws_url(""),
        &[("authorization", &format!("Bearer {huge}"))],
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (401, want.as_str())
    );
    let (mut c, _) = s.connect("42").await;
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.frame().await, ServerFrame::Pong);
}

/// A token in the query and another in the header: the query's is the one read
/// (what a browser, which cannot set headers, sends), whatever the header holds.
#[tokio::test]
async fn the_query_token_wins_over_the_header() {
    let s = start(Db::Sqlite).await;
    let good = s.token("42", &[], 60);
    let mut c = upgrade_with(&s, &format!("?token={good}"), Some("not.a.token"))
        .await
        .expect("query token read, header ignored");
    match c.frame().await {
        ServerFrame::Welcome { user, .. } => assert_eq!(user, "42"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        upgrade_with(&s, "?token=not.a.token", Some(&good))
            .await
            .err(),
        Some(401)
    );
    // An empty query parameter is no token: the header's is read.
    upgrade_with(&s, "?token=", Some(&good))
        .await
        .expect("header read");
}

/// The `Sec-WebSocket-Protocol` value a browser sends for
/// `new WebSocket(url, ["herald", "bearer." + token])`.
fn offer(token: &str) -> String {
    format!("herald, bearer.{token}")
}

/// Upgrades with `query`, `protocols` in `Sec-WebSocket-Protocol` and `header` in
/// `Authorization: Bearer` (each when given); returns the client and the subprotocol
/// the 101 picked, or the refusal's status and error text.
async fn upgrade_offering(
    s: &common::TestServer,
    query: &str,
    protocols: Option<&str>,
    header: Option<&str>,
) -> Result<(Client, Option<String>), (u16, String)> {
    let mut headers = Vec::new();
    if let Some(p) = protocols {
        headers.push(("sec-websocket-protocol", p.to_owned()));
    }
    if let Some(t) = header {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        s.ws_url(query),
    )
    .unwrap();
    for (k, v) in &headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let picked = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok((Client { ws }, picked))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body: Value = serde_json::from_slice(r.body().as_deref().unwrap_or_default())
                .unwrap_or(Value::Null);
            Err((
                r.status().as_u16(),
                body["error"].as_str().unwrap_or_default().to_owned(),
            ))
        }
        Err(e) => panic!("{protocols:?}: {e}"),
    }
}

/// A browser page's way to keep its token out of the URL: the token as the
/// subprotocol `bearer.<jwt>` beside `herald`. The node reads it and answers
/// `herald` (a browser fails a 101 that picks none of the offered protocols), in
/// either order of the offer; `herald` alone, with the token elsewhere, is answered
/// too, and an upgrade that offers nothing gets no protocol, as before.
#[tokio::test]
async fn the_subprotocol_carries_the_token() {
    let s = start(Db::Sqlite).await;
    let token = s.token("42", &[], 60);
    for protocols in [offer(&token), format!("bearer.{token},herald")] {
        let (mut c, picked) = upgrade_offering(&s, "", Some(&protocols), None)
            .await
            .unwrap_or_else(|e| panic!("{protocols}: {e:?}"));
        assert_eq!(picked.as_deref(), Some("herald"), "{protocols}");
        match c.frame().await {
            ServerFrame::Welcome { user, .. } => assert_eq!(user, "42"),
            other => panic!("{other:?}"),
        }
    }
    let (_, picked) = upgrade_offering(&s, &format!("?token={token}"), Some("herald"), None)
        .await
        .expect("herald alone, token in the query");
    assert_eq!(picked.as_deref(), Some("herald"));
    let (_, picked) = upgrade_offering(&s, "", Some("herald"), Some(&token))
        .await
        .expect("herald alone, token in the header");
    assert_eq!(picked.as_deref(), Some("herald"));
    let (ws, resp) = tokio_tungstenite::connect_async(s.ws_url(&format!("?token={token}")))
        .await
        .unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    drop(ws);
}

/// A token offered as the subprotocol is refused with the same 401 and error text as
/// the same token in the query, on an upgrade and on a plain GET (which answers the
/// refusal a browser's WebSocket hides).
#[tokio::test]
async fn subprotocol_tokens_are_refused_as_query_tokens_are() {
    let s = start(Db::Sqlite).await;
    let now = now_unix();
    let huge = format!("{}.{}.x", "a".repeat(5_000), "b".repeat(5_000));
    let bad = [
        "not-a-jwt".to_owned(),
        hs256(json!({"sub": "42", "exp": now - 1})),
        hs256(json!({"sub": "42", "exp": now + 60, "nbf": now + 30})),
        hs256(json!({"sub": "no spaces", "exp": now + 60})),
        forged("none", &json!({"sub": "42", "exp": now + 60})),
        format!("{}x", s.token("42", &[], 60)),
        huge,
    ];
    for token in &bad {
        let (code, error) = upgrade_refusal(&s, token).await;
        assert_eq!(code, 401, "{token}: {error}");
        let refusal = upgrade_offering(&s, "", Some(&offer(token)), None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{token} accepted"));
        assert_eq!(refusal, (code, error.clone()), "{token}");
        let plain = common::api()
            .get(s.http("/ws/notifications/"))
            .header("sec-websocket-protocol", offer(token))
            .send()
            .await
            .unwrap();
        assert_eq!(plain.status(), 401, "{token}");
        let body: Value = plain.json().await.unwrap();
        assert_eq!(body["error"], error, "{token}");
    }
}

/// An offer the node cannot answer honestly is a 400 naming the fix: two tokens
/// (which one would it read?), or a token without `herald` (the 101 could pick none
/// of the offered protocols, and a browser would fail the connection anyway).
#[tokio::test]
async fn subprotocol_offers_without_one_answer_are_refused() {
    let s = start(Db::Sqlite).await;
    let token = s.token("42", &[], 60);
    let (code, error) = upgrade_offering(&s, "", Some(&format!("bearer.{token}")), None)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (code, error.as_str()),
        (
            400,
            "Sec-WebSocket-Protocol offers bearer.<jwt> without herald; offer both \
             (\"herald, bearer.<jwt>\"), so the node has one to answer with"
        )
    );
    let two = format!("herald, bearer.{token}, bearer.{token}");
    assert_eq!(
        upgrade_offering(&s, "", Some(&two), None).await.err(),
        Some((
            400,
            "Sec-WebSocket-Protocol offers more than one bearer.<jwt>; offer one token".into()
        ))
    );
}

/// Where the node reads the token from, when a request carries several: the
/// subprotocol first, then a non-empty query parameter, then the `Authorization`
/// header. Only the first present is read, even when it is refused.
#[tokio::test]
async fn the_subprotocol_token_comes_first() {
    let s = start(Db::Sqlite).await;
    let good = s.token("42", &[], 60);
    let query_good = format!("?token={good}");
    upgrade_offering(
        &s,
        "?token=not.a.token",
        Some(&offer(&good)),
        Some("not.a.token"),
    )
    .await
    .expect("subprotocol read, query and header ignored");
    assert_eq!(
        upgrade_offering(&s, &query_good, Some(&offer("not.a.token")), None)
            .await
            .err(),
        Some((401, "malformed token".into()))
    );
    assert_eq!(
        upgrade_offering(&s, "", Some(&offer("not.a.token")), Some(&good))
            .await
            .err(),
        Some((401, "malformed token".into()))
    );
    // An empty `bearer.` is no token, as an empty `token=` is: the next one is read.
    upgrade_offering(&s, &query_good, Some("herald, bearer."), None)
        .await
        .expect("query read");
    upgrade_offering(&s, "", Some("herald, bearer."), Some(&good))
        .await
        .expect("header read");
}

/// A JWT secret under 32 bytes stops the node before it starts, saying so.
#[tokio::test]
async fn a_short_jwt_secret_is_refused_at_start_up() {
    let storage = Storage::new(Db::Sqlite).await;
    let mut cfg = common::config(&storage, &[]);
    cfg.jwt_secret = Some("only-30-bytes-long-secret-here".into());
    let err = herald_server::Herald::start(cfg)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("HERALD_JWT_SECRET is 30 bytes; it must be at least 32"),
        "{err}"
    );
}
