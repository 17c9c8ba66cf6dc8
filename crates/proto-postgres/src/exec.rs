//! One statement run without a wire client: the exec API and agent tools. The statement goes
//! through the same session relay a psql or driver session uses (classification, decisions,
//! holds for review, masking, recording), fed by a small in-process client over an in-memory
//! stream: nothing here decides or masks, so nothing can differ from the wire path.

use std::sync::Arc;

use bytes::Bytes;
use gatehouse_core::pipeline::{OpenError, OpenRequest, OpenedSession, Pipeline};
use tokio::io::{AsyncWriteExt, DuplexStream};

use crate::session::{ListenerConfig, Session, Statements};
use crate::{BackendFrame, ErrorFields, read_backend};

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecStatement {
    /// One SQL statement.
    pub sql: String,
    /// Values for `$1`, `$2`, … in text form (`None`: SQL NULL).
    pub params: Vec<Option<String>>,
    /// Rows kept for the answer; the statement stops after one more ([`ExecOutput::truncated`]).
    pub max_rows: usize,
}

/// One result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecColumn {
    pub name: String,
    /// The PostgreSQL type name for common types, else `oid:N`.
    pub type_name: String,
}

/// What the statement returned, as a caller of the wire path would have seen it.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub columns: Vec<ExecColumn>,
    /// Values in text form, masked as the session masks them.
    pub rows: Vec<Vec<Option<String>>>,
    /// More rows existed than `max_rows`; they were not fetched.
    pub truncated: bool,
    /// The completion tag (`SELECT 2`, `DELETE 1`), absent when truncated.
    pub command: Option<String>,
    /// Notices received, in order (a hold for review announces itself with one).
    pub notices: Vec<String>,
    /// The error that ended the statement: a refusal (`42501`), the resource's own error, or the
    /// gateway's (`58000`: not recorded, so not run).
    pub error: Option<ErrorFields>,
}

/// Why the statement could not even start.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The session ended before answering (the resource could not be reached, …).
    #[error("{0}")]
    Session(String),
}

/// Largest message accepted from the in-process session (rows can be big).
const MAX_FRAME: usize = 1 << 30;

/// The tables and views a session's upstream login sees (outside the system schemas), as
/// (schema, name): what an agent's tool description offers, once policy has filtered it.
pub async fn tables(session: &OpenedSession, config: &ListenerConfig) -> Result<Vec<(String, String)>, String> {
    let stamp = session.upstream.stamp.chars().take(63).collect();
    let cfg =
        crate::session::upstream_config(session, vec![("application_name".into(), stamp)], config.connect_timeout);
    crate::catalog::tables(&cfg, config.max_backend_message).await
}

/// Opens a session for `open` and runs `statement` in it through the relay, then ends it.
pub async fn exec<P: Pipeline, S: Statements>(
    pipeline: Arc<P>,
    statements: Arc<S>,
    config: Arc<ListenerConfig>,
    open: OpenRequest,
    statement: ExecStatement,
) -> Result<ExecOutput, ExecError> {
    let session = pipeline.open(open).await?;
    let (client, server) = tokio::io::duplex(64 * 1024);
    let relay = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            let reason =
                Session::proxy(Box::new(server), &[], &session, &config, pipeline.clone(), statements, &Arc::default())
                    .await;
            pipeline.close(&session, &reason).await;
        })
    };
    let result = drive(client, &statement).await;
    // The client side is closed by now: the relay ends the session and records it.
    let _ = relay.await;
    result
}

/// The in-process client: waits for the session to be ready, sends the statement in the
/// extended protocol with text results, and reads the answer.
async fn drive(mut stream: DuplexStream, statement: &ExecStatement) -> Result<ExecOutput, ExecError> {
    let mut out = ExecOutput::default();
    loop {
        let frame = next(&mut stream).await?;
        match frame.tag() {
            b'Z' => break,
            b'E' => return Err(ExecError::Session(fields(&frame).message)),
            _ => {}
        }
    }
    let limit = i32::try_from(statement.max_rows.saturating_add(1)).unwrap_or(i32::MAX);
    let mut batch = Vec::with_capacity(statement.sql.len() + 64);
    batch.extend_from_slice(&parse(&statement.sql));
    batch.extend_from_slice(&bind(&statement.params));
    batch.extend_from_slice(&crate::extended::describe_message(b'P', ""));
    batch.extend_from_slice(&execute(limit));
    batch.extend_from_slice(&frame(b'S', &[]));
    stream.write_all(&batch).await.map_err(|e| ExecError::Session(e.to_string()))?;
    loop {
        let frame = next(&mut stream).await?;
        match frame.tag() {
            b'T' => {
                let columns = frame.row_description().map_err(|e| ExecError::Session(e.to_string()))?;
                out.columns = columns
                    .iter()
                    .map(|c| ExecColumn { name: c.name.clone(), type_name: type_name(c.type_oid) })
                    .collect();
            }
            b'D' => {
                if out.rows.len() < statement.max_rows {
                    out.rows.push(
                        crate::catalog::text_values(frame.body())
                            .ok_or_else(|| ExecError::Session("malformed row".into()))?,
                    );
                } else {
                    out.truncated = true;
                }
            }
            b's' => out.truncated = true,
            b'C' => out.command = frame.command_tag().ok().map(str::to_string),
            b'N' => out.notices.push(fields(&frame).message),
            b'E' if out.error.is_none() => out.error = Some(fields(&frame)),
            b'Z' => break,
            _ => {}
        }
    }
    let _ = stream.write_all(&frame(b'X', &[])).await;
    let _ = stream.shutdown().await;
    Ok(out)
}

async fn next(stream: &mut DuplexStream) -> Result<BackendFrame, ExecError> {
    read_backend(stream, MAX_FRAME).await.map_err(|e| ExecError::Session(format!("the session ended: {e}")))
}

fn fields(frame: &BackendFrame) -> ErrorFields {
    frame.error_fields().unwrap_or_default()
}

fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(i32::try_from(body.len() + 4).unwrap_or(i32::MAX)).to_be_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn parse(sql: &str) -> Bytes {
    let mut body = Vec::with_capacity(sql.len() + 4);
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i16.to_be_bytes());
    frame(b'P', &body)
}

fn bind(params: &[Option<String>]) -> Bytes {
    let mut body = vec![0, 0];
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(i16::try_from(params.len()).unwrap_or(i16::MAX)).to_be_bytes());
    for p in params {
        match p {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                body.extend_from_slice(&(i32::try_from(v.len()).unwrap_or(i32::MAX)).to_be_bytes());
                body.extend_from_slice(v.as_bytes());
            }
        }
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &body)
}

fn execute(max_rows: i32) -> Bytes {
    let mut body = vec![0];
    body.extend_from_slice(&max_rows.to_be_bytes());
    frame(b'E', &body)
}

/// Names of the built-in types callers meet most.
fn type_name(oid: u32) -> String {
    let name = match oid {
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "float4",
        701 => "float8",
        869 => "inet",
        1000 => "bool[]",
        1005 => "int2[]",
        1007 => "int4[]",
        1009 => "text[]",
        1016 => "int8[]",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return format!("oid:{oid}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert_eq!(type_name(23), "int4");
        assert_eq!(type_name(99999), "oid:99999");
    }
}
