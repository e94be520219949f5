//! An axum service that mounts Herald and notifies its users from its own handlers.
//!
//! The application has routes of its own (`POST /orders/{id}/ship`, and
//! `GET /me/herald-token`, which in a real service would read the signed-in user from
//! its session), Herald's routes merged beside them (WebSocket, SSE, API, health, the
//! live page), and Herald's admin routes on a private listener. Shipping an order
//! stores a notification for its customer, who receives it at once on every open
//! connection.
//!
//! ```sh
//! cargo run -p herald-server --example embedded
//! TOKEN=$(curl -s 'http://127.0.0.1:3000/me/herald-token?user=42')
//! # open http://127.0.0.1:3000/demo/#token=$TOKEN, then:
//! curl -s -X POST http://127.0.0.1:3000/orders/7/ship -H 'content-type: application/json' -d '{"customer":"42"}'
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_server::{Config, Herald, PublishError};
use serde::Deserialize;
use serde_json::{Value, json};

/// The application's router: its own routes, with Herald's merged in.
pub fn app(herald: Herald) -> Router {
    Router::new()
        .route("/orders/{id}/ship", post(ship))
        .route("/me/herald-token", get(token))
        .with_state(herald.clone())
        .merge(herald.router())
}

#[derive(Deserialize)]
struct Shipment {
    customer: String,
}

/// The application's own work (here, none), then a notification for the customer.
async fn ship(
    State(herald): State<Herald>,
    Path(order): Path<u64>,
    Json(shipment): Json<Shipment>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let message = json!({"text": format!("order {order} shipped"), "order": order});
    let n = herald
        .notify(&shipment.customer, &message)
        .await
        .map_err(refusal)?;
    Ok(Json(json!({"order": order, "notification": n.id})))
}

#[derive(Deserialize)]
struct Me {
    user: String,
}

/// A Herald client token for the signed-in user (here, `?user=`), valid one hour.
async fn token(
    State(herald): State<Herald>,
    Query(me): Query<Me>,
) -> Result<String, (StatusCode, String)> {
    herald
        .token(&me.user, &[], Duration::from_secs(3600))
        .map_err(refusal)
}

fn refusal(e: PublishError) -> (StatusCode, String) {
    let status = match e {
        PublishError::Invalid(_) => StatusCode::BAD_REQUEST,
        PublishError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        PublishError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string())
}

#[allow(dead_code)] // the tests use `app` alone
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut config = Config::defaults();
    config.data_dir = "./herald-embedded-data".into();
    let herald = Herald::start(config).await?;

    let admin = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    let admin_routes = herald.admin_router();
    tokio::spawn(async move {
        let service = admin_routes.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(admin, service).await
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("shop on http://127.0.0.1:3000 (Herald admin on 127.0.0.1:3001)");
    let on_shutdown = {
        let herald = herald.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            // Drains Herald's connections (paced 1012) before the server stops.
            herald.shutdown().await;
        }
    };
    // A make-service resolves the routes once, not once per connection.
    axum::serve(listener, app(herald).into_make_service())
        .with_graceful_shutdown(on_shutdown)
        .await?;
    Ok(())
}
