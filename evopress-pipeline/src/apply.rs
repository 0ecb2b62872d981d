//! Turning result files into a runnable model for `eval` and `convert`: each method's config
//! file applied in turn to the dense model (a drop plan, swapped variants).

use evopress_core::{Candidate, Error, Method, Model, Report, Result};
use std::path::{Path, PathBuf};

/// `--<method flag> FILE` pairs as given on the command line, with the shared `--database`.
pub struct Configs<'m> {
    pub files: Vec<(&'m dyn Method, PathBuf)>,
    pub database: Option<PathBuf>,
}

impl Configs<'_> {
    /// `model` with every config applied; the dense model when there is none.
    pub fn apply(&self, model: &Model) -> Result<(Candidate, Report)> {
        let mut candidate = Candidate::dense(model);
        let mut report = Report::default();
        let database = self.database.as_deref();
        for (method, file) in &self.files {
            let flag = method.config_flag().ok_or_else(|| {
                Error::Invalid(format!("method `{}` reads no result files", method.name()))
            })?;
            if flag.needs_database && database.is_none() {
                return Err(Error::Invalid(format!(
                    "--{} needs --database DIR: the variant database its levels come from",
                    flag.long
                )));
            }
            let r = method
                .apply_config(&mut candidate, file, database)
                .map_err(|e| in_file(file, e))?;
            report.fields.insert(
                flag.long.replace('-', "_"),
                file.display().to_string().into(),
            );
            report.merge(r);
        }
        if let Some(db) = database {
            report
                .fields
                .insert("database".into(), db.display().to_string().into());
        }
        Ok((candidate, report))
    }
}

fn in_file(file: &Path, e: Error) -> Error {
    match e {
        Error::Invalid(msg) if !msg.contains(&file.display().to_string()) => {
            Error::Invalid(format!("{}: {msg}", file.display()))
        }
        other => other,
    }
}
