//! The XML of the S3 replies Ferry reads, and the one body it writes (the manifest of
//! CompleteMultipartUpload). Parsing is quick-xml's serde; unknown elements are ignored, so
//! servers that add fields (Garage, MinIO, Ceph) parse alike.

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// `InitiateMultipartUploadResult`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Initiated {
    pub upload_id: String,
}

/// `ListPartsResult`: one page.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PartsPage {
    #[serde(default, rename = "Part")]
    pub parts: Vec<ListedPart>,
    #[serde(default)]
    pub is_truncated: bool,
    pub next_part_number_marker: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedPart {
    pub part_number: u32,
    /// Empty when the server lists none (s3s-fs).
    #[serde(rename = "ETag", default)]
    pub etag: String,
    pub size: u64,
    #[serde(rename = "ChecksumCRC32C")]
    pub checksum_crc32c: Option<String>,
    /// RFC 3339.
    pub last_modified: Option<String>,
}

/// `ListMultipartUploadsResult`: one page.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UploadsPage {
    #[serde(default, rename = "Upload")]
    pub uploads: Vec<ListedUpload>,
    #[serde(default)]
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedUpload {
    pub key: String,
    pub upload_id: String,
    /// RFC 3339.
    pub initiated: String,
}

/// `AccessControlPolicy`: an object's grants (GetObjectAcl).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccessControlPolicy {
    #[serde(default)]
    pub access_control_list: GrantList,
}

#[derive(Debug, Default, Deserialize)]
pub struct GrantList {
    #[serde(default, rename = "Grant")]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Grant {
    pub grantee: Grantee,
    #[serde(default)]
    pub permission: String,
}

/// A grantee: a group has a URI, an account an ID (not read).
#[derive(Debug, Deserialize)]
pub struct Grantee {
    #[serde(rename = "URI", default)]
    pub uri: String,
}

impl AccessControlPolicy {
    /// Each grant as (group URI, empty for an account; permission).
    pub fn grants(self) -> Vec<(String, String)> {
        let grants = self.access_control_list.grants.into_iter();
        grants
            .map(|grant| (grant.grantee.uri, grant.permission))
            .collect()
    }
}

/// `<Error>`: S3's refusal, also the body of a 200 from CompleteMultipartUpload that failed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorReply {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// The bucket's region, when the refusal is that requests were signed for another.
    #[serde(default)]
    pub region: Option<String>,
}

/// Parses a reply body as `T`.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    quick_xml::de::from_str(text).map_err(|error| format!("unreadable XML: {error}"))
}

/// The `<Error>` in `text`, if its root element is one.
pub fn error_in(text: &str) -> Option<ErrorReply> {
    let root = text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .strip_prefix("<?xml")
        .map_or(text.trim_start(), |rest| {
            rest.split_once("?>")
                .map_or("", |(_, body)| body.trim_start())
        });
    if !root.starts_with("<Error>") && !root.starts_with("<Error ") {
        return None;
    }
    parse::<ErrorReply>(root).ok()
}

/// One part of the manifest.
pub struct ManifestEntry<'a> {
    pub number: u32,
    pub etag: &'a str,
    /// Base64, when the upload was created with a CRC32C checksum.
    pub crc32c: Option<String>,
}

/// The body of CompleteMultipartUpload.
pub fn complete_body(parts: &[ManifestEntry<'_>]) -> String {
    use quick_xml::escape::escape;
    let mut body = String::from("<CompleteMultipartUpload>");
    for part in parts {
        body.push_str("<Part><PartNumber>");
        body.push_str(&part.number.to_string());
        body.push_str("</PartNumber><ETag>\"");
        body.push_str(&escape(part.etag.trim_matches('"')));
        body.push_str("\"</ETag>");
        if let Some(crc) = &part.crc32c {
            body.push_str("<ChecksumCRC32C>");
            body.push_str(&escape(crc.as_str()));
            body.push_str("</ChecksumCRC32C>");
        }
        body.push_str("</Part>");
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parts_pages_parse_with_and_without_checksums() {
        let page = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId>
  <IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>
  <Part><PartNumber>1</PartNumber><ETag>&quot;aa&quot;</ETag><Size>5242880</Size>
    <ChecksumCRC32C>AAAAAQ==</ChecksumCRC32C></Part>
  <Part><PartNumber>2</PartNumber><ETag>"bb"</ETag><Size>7</Size></Part>
</ListPartsResult>"#;
        let parsed: PartsPage = parse(page).unwrap();
        assert!(parsed.is_truncated);
        assert_eq!(parsed.next_part_number_marker, Some(2));
        assert_eq!(parsed.parts.len(), 2);
        assert_eq!(parsed.parts[0].etag, "\"aa\"");
        assert_eq!(parsed.parts[0].checksum_crc32c.as_deref(), Some("AAAAAQ=="));
        assert_eq!(parsed.parts[1].checksum_crc32c, None);
        let empty: PartsPage =
            parse("<ListPartsResult><IsTruncated>false</IsTruncated></ListPartsResult>").unwrap();
        assert!(empty.parts.is_empty());
    }

    #[test]
    fn an_objects_grants_parse_with_groups_and_accounts() {
        let policy = r#"<?xml version="1.0" encoding="UTF-8"?>
<AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Owner><ID>o1</ID><DisplayName>me</DisplayName></Owner>
  <AccessControlList>
    <Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">
      <ID>o1</ID><DisplayName>me</DisplayName></Grantee><Permission>FULL_CONTROL</Permission></Grant>
    <Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group">
      <URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant>
  </AccessControlList>
</AccessControlPolicy>"#;
        let grants = parse::<AccessControlPolicy>(policy).unwrap().grants();
        let all_users = "http://acs.amazonaws.com/groups/global/AllUsers";
        assert_eq!(
            grants,
            [
                (String::new(), "FULL_CONTROL".to_string()),
                (all_users.to_string(), "READ".to_string())
            ]
        );
        let none = parse::<AccessControlPolicy>("<AccessControlPolicy/>").unwrap();
        assert!(none.grants().is_empty());
    }

    #[test]
    fn an_error_is_found_only_at_the_root() {
        let error = error_in(
            "<?xml version=\"1.0\"?>\n<Error><Code>InvalidPart</Code><Message>m</Message></Error>",
        )
        .unwrap();
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("InvalidPart", "m")
        );
        assert!(
            error_in(
                "<CompleteMultipartUploadResult><Error>x</Error></CompleteMultipartUploadResult>"
            )
            .is_none()
        );
        assert!(error_in("").is_none());
    }

    #[test]
    fn the_manifest_escapes_etags_and_lists_checksums() {
        let body = complete_body(&[
            ManifestEntry {
                number: 1,
                etag: "\"a&b\"",
                crc32c: Some("AAAAAQ==".into()),
            },
            ManifestEntry {
                number: 2,
                etag: "c",
                crc32c: None,
            },
        ]);
        assert_eq!(
            body,
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a&amp;b\"</ETag>\
             <ChecksumCRC32C>AAAAAQ==</ChecksumCRC32C></Part><Part><PartNumber>2</PartNumber>\
             <ETag>\"c\"</ETag></Part></CompleteMultipartUpload>"
        );
    }
}
