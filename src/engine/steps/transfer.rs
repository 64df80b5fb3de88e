//! Transfer: copy (or upload) the service directory into a new release,
//! and record it. Undo: remove the release's files and mark it failed.

use super::{Done, Step, StepCx, StepError, Undo};
use crate::engine::{Event, Source};
use crate::hosting::release;
use crate::model::*;
use crate::support::error::FailureKind;
use chrono::Utc;
use futures_util::future::BoxFuture;
use std::path::Path;

pub(in crate::engine) struct Upload;

impl Step for Upload {
    fn phase(&self) -> PhaseName {
        PhaseName::Transfer
    }

    fn name(&self) -> &'static str {
        "upload release"
    }

    fn describe(&self, cx: &StepCx<'_>) -> String {
        format!(
            "copy the service directory to {} on {}",
            cx.new_release().dir().display(),
            cx.site.host.name()
        )
    }

    fn skip(&self, cx: &StepCx<'_>) -> Option<String> {
        match &cx.work.source {
            Source::Existing(id) => Some(format!("existing release {id}")),
            Source::Dir(_) => None,
        }
    }

    fn run<'a>(&'a self, cx: &'a mut StepCx<'_>) -> BoxFuture<'a, Result<Done, StepError>> {
        Box::pin(async move {
            let Source::Dir(src) = &cx.work.source else {
                return Ok(Done::quiet("nothing to transfer"));
            };
            let (id, details) = upload(cx, src)
                .await
                .map_err(|e| StepError::new(FailureKind::Transfer, e))?;
            cx.release = Some(id.clone());
            Ok(Done::shown(details).with_undo(RemoveRelease { release: id }))
        })
    }
}

/// Why a release could not be put in place.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("keeping the environment values in {path}: {source}")]
    EnvValues {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Host(#[from] crate::hosting::host::HostError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

async fn upload(cx: &mut StepCx<'_>, src: &Path) -> Result<(String, String), UploadError> {
    let hash = release::content_hash_off_thread(src)
        .await
        .map_err(|source| UploadError::Read {
            path: src.display().to_string(),
            source,
        })?;
    let id = cx
        .work
        .release_id
        .clone()
        .unwrap_or_else(|| release::new_release_id(&hash, &cx.dirs));
    let sink = cx.sink;
    let progress = |sent: u64, total: u64| sink.event(&Event::TransferProgress { sent, total });
    let stats = cx
        .site
        .host
        .put_release(src, &cx.dirs, &id, cx.previous.as_deref(), &progress)
        .await?;
    cx.store
        .save_release(&Release {
            service_name: cx.work.service.clone(),
            id: id.clone(),
            status: ReleaseStatus::Pending,
            job_id: cx.job_id.clone(),
            content_hash: hash,
            created_at: Utc::now(),
            spec: cx.work.spec.clone(),
            commit: cx.work.commit.clone(),
        })
        .await?;
    cx.local_dirs()
        .save_env_values(&id, &cx.work.spec.env)
        .map_err(|source| UploadError::EnvValues {
            path: cx.local_dirs().env_values_file(&id).display().to_string(),
            source,
        })?;
    let size = crate::hosting::host::human_bytes(stats.bytes);
    let to = cx.dirs.release(&id);
    let details = if cx.site.host.is_local() {
        format!("{} files ({size}) copied to {}", stats.files, to.display())
    } else {
        format!(
            "{} files ({size}) to {} on {}: {} uploaded ({}), {} unchanged and copied on the server",
            stats.files,
            to.display(),
            cx.site.host.name(),
            stats.uploaded_files,
            crate::hosting::host::human_bytes(stats.uploaded_bytes),
            stats.linked_files
        )
    };
    cx.transfer = Some(stats);
    Ok((id, details))
}

/// Removes a release that never became current, and marks it failed.
struct RemoveRelease {
    release: String,
}

impl Undo for RemoveRelease {
    fn describe(&self) -> String {
        format!("remove release {}", self.release)
    }

    fn undo<'a>(&'a self, cx: &'a StepCx<'_>, _: &'a mut RollbackRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = cx
                .store
                .set_release_status(&cx.work.service, &self.release, ReleaseStatus::Failed)
                .await;
            cx.local_dirs().remove_env_values(&self.release);
            if let Err(e) = cx.site.host.remove_release(&cx.dirs, &self.release).await {
                cx.note(&format!("rollback: {e}"));
            }
        })
    }
}
