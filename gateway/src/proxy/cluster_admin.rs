//! Requests about the backend cluster itself that pass through untouched
//! (ACLs, client quotas, SCRAM credentials), and the check in front of them.
//!
//! They run on the backend under the gateway's own identity, so they are the
//! gateway's to allow: with authorization, the client needs the operation
//! Kafka asks for on the cluster (describe / alter, describe_configs /
//! alter_configs); with a router plugin and no authorization they are refused
//! outright, since tenants would otherwise read and change the whole
//! backend's ACLs, quotas and credentials. A refusal is the API's own answer
//! with CLUSTER_AUTHORIZATION_FAILED, never a dropped connection.

use bytes::Bytes;
use kafka_protocol::messages::{
    alter_client_quotas_response, alter_user_scram_credentials_response, create_acls_response,
    delete_acls_response, AlterClientQuotasRequest, AlterClientQuotasResponse,
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey, CreateAclsRequest,
    CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsResponse,
    DescribeClientQuotasResponse, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::handlers::code;
use super::routes::ClientRoutes;
use super::{Gateway, ProxyError};
use crate::authz::Operation;
use crate::codec::{encode_response, Request};

/// What Kafka asks of a client on the cluster for each of these APIs.
fn operation(api: ApiKey) -> Operation {
    match api {
        ApiKey::DescribeAcls | ApiKey::DescribeUserScramCredentials => Operation::Describe,
        ApiKey::DescribeClientQuotas => Operation::DescribeConfigs,
        ApiKey::AlterClientQuotas => Operation::AlterConfigs,
        _ => Operation::Alter,
    }
}

/// The refusal for `req`, or `None` if it may go to the backend.
pub fn check(gw: &Gateway, router: &ClientRoutes, req: &Request) -> Result<Option<Bytes>, ProxyError> {
    let api = super::session::api_key_name(req.api_key);
    let message = if router.authorizes() {
        if router.may_cluster(operation(req.api_key), api) {
            return Ok(None);
        }
        "Cluster authorization failed.".to_string()
    } else if gw.router_plugin.is_some() {
        format!("{api} is refused while a router plugin separates tenants; allow it with [[acls]] on the cluster")
    } else {
        return Ok(None);
    };
    refusal(req, &message).map(Some)
}

/// The API's answer with CLUSTER_AUTHORIZATION_FAILED everywhere it has a code.
fn refusal(req: &Request, message: &str) -> Result<Bytes, ProxyError> {
    const CODE: i16 = code::CLUSTER_AUTHORIZATION_FAILED;
    let text = Some(StrBytes::from_string(message.to_string()));
    let (version, header) = (req.version(), req.response_header_version());
    let bytes = match req.api_key {
        ApiKey::DescribeAcls => {
            let out = DescribeAclsResponse::default().with_error_code(CODE).with_error_message(text);
            encode_response(&out, version, header, "DescribeAcls response")?
        }
        ApiKey::CreateAcls => {
            let body: CreateAclsRequest = req.decode("CreateAcls request")?;
            let results = body
                .creations
                .iter()
                .map(|_| create_acls_response::AclCreationResult::default().with_error_code(CODE).with_error_message(text.clone()))
                .collect();
            encode_response(&CreateAclsResponse::default().with_results(results), version, header, "CreateAcls response")?
        }
        ApiKey::DeleteAcls => {
            let body: DeleteAclsRequest = req.decode("DeleteAcls request")?;
            let results = body
                .filters
                .iter()
                .map(|_| delete_acls_response::DeleteAclsFilterResult::default().with_error_code(CODE).with_error_message(text.clone()))
                .collect();
            let out = DeleteAclsResponse::default().with_filter_results(results);
            encode_response(&out, version, header, "DeleteAcls response")?
        }
        ApiKey::DescribeClientQuotas => {
            let out = DescribeClientQuotasResponse::default().with_error_code(CODE).with_error_message(text).with_entries(None);
            encode_response(&out, version, header, "DescribeClientQuotas response")?
        }
        ApiKey::AlterClientQuotas => {
            let body: AlterClientQuotasRequest = req.decode("AlterClientQuotas request")?;
            let entries = body
                .entries
                .iter()
                .map(|e| {
                    let entity = e
                        .entity
                        .iter()
                        .map(|x| {
                            alter_client_quotas_response::EntityData::default()
                                .with_entity_type(x.entity_type.clone())
                                .with_entity_name(x.entity_name.clone())
                        })
                        .collect();
                    alter_client_quotas_response::EntryData::default()
                        .with_error_code(CODE)
                        .with_error_message(text.clone())
                        .with_entity(entity)
                })
                .collect();
            let out = AlterClientQuotasResponse::default().with_entries(entries);
            encode_response(&out, version, header, "AlterClientQuotas response")?
        }
        ApiKey::DescribeUserScramCredentials => {
            let out = DescribeUserScramCredentialsResponse::default().with_error_code(CODE).with_error_message(text);
            encode_response(&out, version, header, "DescribeUserScramCredentials response")?
        }
        _ => {
            let body: AlterUserScramCredentialsRequest = req.decode("AlterUserScramCredentials request")?;
            let users = body.deletions.iter().map(|d| &d.name).chain(body.upsertions.iter().map(|u| &u.name));
            let results = users
                .map(|user| {
                    alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                        .with_user(user.clone())
                        .with_error_code(CODE)
                        .with_error_message(text.clone())
                })
                .collect();
            let out = AlterUserScramCredentialsResponse::default().with_results(results);
            encode_response(&out, version, header, "AlterUserScramCredentials response")?
        }
    };
    Ok(bytes)
}
