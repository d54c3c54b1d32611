//! A thin client of the native protocol for driving a receiver by hand in tests.

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use ferry::protocol::{PART_NUMBER_HEADER, PART_OFFSET_HEADER};

use super::{Receiver, TOKEN};

/// A thin protocol client for driving the receiver by hand.
pub struct Api {
    pub client: Client,
    pub url: String,
}

impl Api {
    pub fn new(receiver: &Receiver) -> Api {
        Api::at(&receiver.url)
    }

    /// A client of the receiver at `url` (e.g. a `ferry serve` process).
    pub fn at(url: &str) -> Api {
        ferry::upload::native::install_crypto_provider();
        Api {
            client: Client::new(),
            url: url.to_string(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn init(&self, filename: &str, total_size: u64) -> (StatusCode, Value) {
        self.init_with(
            json!({"filename": filename, "total_size": total_size, "workspace_id": "ws"}),
        )
        .await
    }

    /// Init with a body of the test's own making (hostile or incomplete ones included).
    pub async fn init_with(&self, body: Value) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            "/v1/uploads/chunked/init",
            Some(body),
        )
        .await
    }

    pub async fn open(&self, filename: &str, total_size: u64) -> String {
        let (status, body) = self.init(filename, total_size).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["upload_id"].as_str().unwrap().to_string()
    }

    pub async fn put(
        &self,
        upload_id: &str,
        part_number: &str,
        bytes: Vec<u8>,
    ) -> (StatusCode, Value) {
        self.put_at(upload_id, part_number, bytes, None).await
    }

    /// `put`, saying where the part lies in the file (protocol v1.1) when `offset` is given.
    pub async fn put_at(
        &self,
        upload_id: &str,
        part_number: &str,
        bytes: Vec<u8>,
        offset: Option<u64>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .put(format!("{}/v1/uploads/chunked/{upload_id}/parts", self.url))
            .bearer_auth(TOKEN)
            .header(PART_NUMBER_HEADER, part_number);
        if let Some(offset) = offset {
            request = request.header(PART_OFFSET_HEADER, offset);
        }
        let response = request.body(bytes).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn complete(
        &self,
        upload_id: &str,
        parts: &[(u32, &str)],
        sha256: Option<&str>,
    ) -> (StatusCode, Value) {
        let parts: Vec<Value> = parts
            .iter()
            .map(|(number, etag)| json!({"part_number": number, "etag": etag}))
            .collect();
        let mut body = json!({ "parts": parts });
        if let Some(digest) = sha256 {
            body["sha256"] = json!(digest);
        }
        let path = format!("/v1/uploads/chunked/{upload_id}/complete");
        self.call(reqwest::Method::POST, &path, Some(body)).await
    }
}
