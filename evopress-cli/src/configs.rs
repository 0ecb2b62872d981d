//! The flags that apply result files for `eval` and `convert`: one `--<flag> FILE` per
//! registered method (from [`Method::config_flag`]) plus the shared `--database`.

use crate::METHODS;
use clap::{Arg, ArgMatches, Command, FromArgMatches};
use evopress_core::Method;
use evopress_pipeline::Configs;
use std::path::PathBuf;

/// The parsed flags, in registry order.
#[derive(Clone, Debug, Default)]
pub struct ConfigArgs {
    files: Vec<(usize, PathBuf)>,
    database: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn configs(&self) -> Configs<'static> {
        Configs {
            files: (self.files.iter())
                .map(|(i, f)| (METHODS[*i] as &dyn Method, f.clone()))
                .collect(),
            database: self.database.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl clap::Args for ConfigArgs {
    fn augment_args(mut cmd: Command) -> Command {
        for flag in METHODS.iter().filter_map(|m| m.config_flag()) {
            let mut arg = Arg::new(flag.long)
                .long(flag.long)
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(flag.help);
            if flag.needs_database {
                arg = arg.requires("database");
            }
            cmd = cmd.arg(arg);
        }
        cmd.arg(
            Arg::new("database")
                .long("database")
                .value_name("DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .help("the variant database the level files pick variants from"),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let files = (METHODS.iter().enumerate())
            .filter_map(|(i, method)| {
                let f = m.get_one::<PathBuf>(method.config_flag()?.long)?;
                Some((i, f.clone()))
            })
            .collect();
        Ok(ConfigArgs {
            files,
            database: m.get_one::<PathBuf>("database").cloned(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}
