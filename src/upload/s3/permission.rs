//! What an S3 request is called and which IAM actions allow it, for refusals: a bare "403
//! AccessDenied: Access Denied" (MinIO, Ceph, Garage, older AWS messages) leaves the user to
//! guess which permission the key lacks; the refusal names the call and the actions.

use rusty_s3::Method;

use super::request::Call;
use crate::upload::backend::{Name, Operation, Request};

/// `operation` by the S3 API's name for the call that does it; a query is one of several
/// calls (HeadObject, GetObject, ListParts), which its `Call` tells apart.
pub fn request(operation: Operation) -> Request {
    let name = match operation {
        Operation::Create => &"CreateMultipartUpload",
        Operation::PutPart(_) => &"UploadPart",
        Operation::Complete => &"CompleteMultipartUpload",
        Operation::Abort => &"AbortMultipartUpload",
        Operation::List => &"ListMultipartUploads",
        Operation::PutFile => &"PutObject",
        Operation::Query => return operation.into(),
    };
    Request::named(operation, name)
}

/// The S3 API's name for `call`, told by its method and query (as the API reference names it).
pub fn call_name(call: &Call) -> Name {
    let has = |name: &str| call.query.contains_key(name);
    match call.method {
        Method::Post if has("uploads") => &"CreateMultipartUpload",
        Method::Post => &"CompleteMultipartUpload",
        Method::Put if has("partNumber") => &"UploadPart",
        Method::Put => &"PutObject",
        Method::Delete if has("uploadId") => &"AbortMultipartUpload",
        Method::Delete => &"DeleteObject",
        Method::Get if has("uploadId") => &"ListParts",
        Method::Get if has("uploads") => &"ListMultipartUploads",
        Method::Get if has("acl") => &"GetObjectAcl",
        Method::Get => &"GetObject",
        Method::Head => &"HeadObject",
    }
}

/// The IAM actions a policy must allow for `call` (where a canned ACL rides along, the one to
/// set it as well).
pub fn actions(call: &Call) -> String {
    let action = match *call_name(call) {
        "CreateMultipartUpload" | "UploadPart" | "CompleteMultipartUpload" | "PutObject" => {
            "s3:PutObject"
        }
        "AbortMultipartUpload" => "s3:AbortMultipartUpload",
        "DeleteObject" => "s3:DeleteObject",
        "ListParts" => "s3:ListMultipartUploadParts",
        "ListMultipartUploads" => "s3:ListBucketMultipartUploads",
        "GetObjectAcl" => "s3:GetObjectAcl",
        _ => "s3:GetObject",
    };
    match call.headers.contains_key("x-amz-acl") {
        true => format!("{action} and s3:PutObjectAcl"),
        false => action.to_string(),
    }
}

/// The words added to an AccessDenied refusal of `call` (whose message names the call).
pub fn hint(call: &Call) -> String {
    let scope = match *call_name(call) {
        "ListMultipartUploads" => "the bucket",
        _ => "the key",
    };
    format!("needs {} on {scope}", actions(call))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::backend::Operation;

    #[test]
    fn each_call_is_named_with_the_actions_that_allow_it() {
        let url: url::Url = "http://127.0.0.1:9000/bucket/key".parse().unwrap();
        let call = |method, query: &[&'static str]| {
            let mut call = Call::new(Operation::Create, method, url.clone());
            for name in query {
                call = call.query(name, "1");
            }
            call
        };
        let cases = [
            (
                call(Method::Post, &["uploads"]),
                "CreateMultipartUpload needs s3:PutObject on the key",
            ),
            (
                call(Method::Put, &["partNumber", "uploadId"]),
                "UploadPart needs s3:PutObject on the key",
            ),
            (
                call(Method::Post, &["uploadId"]),
                "CompleteMultipartUpload needs s3:PutObject on the key",
            ),
            (
                call(Method::Put, &[]),
                "PutObject needs s3:PutObject on the key",
            ),
            (
                call(Method::Put, &[]).header("x-amz-acl", "public-read"),
                "PutObject needs s3:PutObject and s3:PutObjectAcl on the key",
            ),
            (
                call(Method::Delete, &["uploadId"]),
                "AbortMultipartUpload needs s3:AbortMultipartUpload on the key",
            ),
            (
                call(Method::Get, &["uploadId", "max-parts"]),
                "ListParts needs s3:ListMultipartUploadParts on the key",
            ),
            (
                call(Method::Get, &["uploads", "prefix"]),
                "ListMultipartUploads needs s3:ListBucketMultipartUploads on the bucket",
            ),
            (
                call(Method::Get, &["acl"]),
                "GetObjectAcl needs s3:GetObjectAcl on the key",
            ),
            (
                call(Method::Get, &[]),
                "GetObject needs s3:GetObject on the key",
            ),
            (
                call(Method::Head, &[]),
                "HeadObject needs s3:GetObject on the key",
            ),
        ];
        for (call, expected) in cases {
            assert_eq!(format!("{} {}", call_name(&call), hint(&call)), expected);
        }
    }
}
