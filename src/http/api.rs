//! The key-protected HTTP API (`/api/*`): publish, tell, cluster view.

use super::{
    ScaledSocketsService,
    response::{BoxError, ResponseBody, api_error, json, read_body, text},
};
use crate::{data::Data, error::ErrorCode, sockets::Sockets};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

impl ScaledSocketsService {
    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(key) = &self.endpoint.hub.config.api_key else {
            return false;
        };
        let Some(given) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Compare without an early exit, so timing does not reveal the key.
        given.len() == key.len()
            && given
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    pub(super) async fn api<B>(self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if self.endpoint.hub.config.api_key.is_none() {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if !self.authorized(&req) {
            let mut res = api_error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing or wrong API key",
            );
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
        let route = (req.method().clone(), req.uri().path().to_owned());
        match (route.0, route.1.as_str()) {
            (Method::GET, "/api/cluster") => self.api_cluster().await,
            (Method::POST, path @ ("/api/publish" | "/api/tell")) => {
                // One body reader for every POST route.
                let body = match read_body(req).await {
                    Ok(body) => body,
                    Err(response) => return response,
                };
                if path == "/api/publish" {
                    self.api_publish(&body).await
                } else {
                    self.api_tell(&body).await
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn api_publish(self, body: &[u8]) -> Response<ResponseBody> {
        #[derive(Deserialize)]
        struct PublishBody<'a> {
            channel: String,
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let parsed: PublishBody<'_> = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    &format!("expected {{\"channel\": string, \"data\": any}}: {e}"),
                );
            }
        };
        match self
            .endpoint
            .hub
            .publish(&parsed.channel, parsed.data.get())
            .await
        {
            Ok(pos) => {
                #[derive(Serialize)]
                struct Published<'a> {
                    offset: u64,
                    epoch: &'a str,
                }
                let body = serde_json::to_vec(&Published {
                    offset: pos.offset,
                    epoch: &pos.epoch,
                })
                .unwrap_or_default();
                json(StatusCode::OK, body)
            }
            Err(e) if e.code == ErrorCode::Unavailable => {
                api_error(StatusCode::SERVICE_UNAVAILABLE, e.code, &e.message)
            }
            Err(e) if e.code == ErrorCode::BadRequest => {
                api_error(StatusCode::BAD_REQUEST, e.code, &e.message)
            }
            Err(e) if e.code == ErrorCode::LimitExceeded => {
                api_error(StatusCode::PAYLOAD_TOO_LARGE, e.code, &e.message)
            }
            Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.code, &e.message),
        }
    }

    /// `POST /api/tell` `{"user"|"session"|"client": id, "event": e, "data": …}`:
    /// a `tell` to every connection of a user or session, or to one client,
    /// wherever they are connected. 200 `{}`; 400 bad body; 503 when the
    /// backend is down; 404 for an unknown client.
    async fn api_tell(self, body: &[u8]) -> Response<ResponseBody> {
        #[derive(Deserialize)]
        struct TellBody<'a> {
            user: Option<String>,
            session: Option<String>,
            client: Option<String>,
            event: String,
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        let parsed: TellBody<'_> = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    &format!(
                        "expected {{\"user\"|\"session\"|\"client\": string, \"event\": string, \"data\": any}}: {e}"
                    ),
                );
            }
        };
        let data = match parsed.data {
            Some(raw) => Data::from(raw),
            None => Data::null(),
        };
        let sockets = Sockets::new(self.endpoint.hub.clone(), self.endpoint.cores.clone());
        let result = match (parsed.user, parsed.session, parsed.client) {
            (Some(user), None, None) => sockets.tell_user(&user, &parsed.event, &data).await,
            (None, Some(session), None) => {
                sockets.tell_session(&session, &parsed.event, &data).await
            }
            (None, None, Some(client)) => sockets.tell_client(&client, &parsed.event, &data).await,
            _ => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    "name exactly one of `user`, `session` or `client`",
                );
            }
        };
        match result {
            Ok(()) => json(StatusCode::OK, "{}"),
            Err(e) => {
                let status = match e.code {
                    ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
                    ErrorCode::LimitExceeded => StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::NotFound => StatusCode::NOT_FOUND,
                    ErrorCode::Unavailable | ErrorCode::Timeout => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                api_error(status, e.code, &e.message)
            }
        }
    }

    async fn api_cluster(self) -> Response<ResponseBody> {
        #[derive(Serialize)]
        struct Instance {
            id: String,
            address: String,
            connections: u64,
            cores: u64,
        }
        #[derive(Serialize)]
        struct Core {
            id: String,
            kind: String,
            instance: String,
        }
        #[derive(Serialize)]
        struct Cluster {
            instances: Vec<Instance>,
            cores: Vec<Core>,
        }
        let _timeout = self.endpoint.hub.config.scaler_timeout;
        let instances = match self.endpoint.hub.scaler.instances().await {
            Ok(list) => list,
            Err(e) => {
                return api_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    &e.to_string(),
                );
            }
        };
        let cores = match self.endpoint.cores.list().await {
            Ok(list) => list,
            Err(e) => {
                return api_error(StatusCode::SERVICE_UNAVAILABLE, e.code, &e.message);
            }
        };
        let mut instances: Vec<Instance> = instances
            .into_iter()
            .map(|i| Instance {
                id: i.id,
                address: i.address,
                connections: i.connections,
                cores: i.cores,
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let cores = cores
            .into_iter()
            .map(|c| Core {
                id: c.id,
                kind: c.kind,
                instance: c.instance,
            })
            .collect();
        let body = serde_json::to_vec(&Cluster { instances, cores }).unwrap_or_default();
        json(StatusCode::OK, body)
    }
}
