//! The search over a GGUF database at a target size (docs/gguf-search.md): one ggml type per
//! tensor, the budget a ceiling on the exact bytes of the searched tensors' blocks; baselines
//! are uniform types, DP over `rel_error` and llama.cpp's presets.

use crate::builder::{level_type, load_ggml, EMBEDDING, GGML_FORMAT, HEAD};
use crate::preset::{layer_of, parse_preset, preset_type, ModelShape, Preset, Role};
use evopress_core::evaluate::{Calibration, SwapEvaluator};
use evopress_core::variants::VariantTable;
use evopress_core::{
    Baseline, BaselineContext, BaselineInfo, Candidate, CompressionBackend, Error, Model, Report,
    Result,
};
use evopress_kernels::{Device, GgmlType, Weight};
use evopress_search::dp::dp_allocate;
use evopress_search::{Budget, Evaluator, Genome, Group, GroupStart, Level, SearchSpace, Unit};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The result file: one ggml type per searched tensor.
pub const CONFIG_FILE: &str = "gguf_config.toml";

/// The `[backend] kind = "gguf"` settings: a database and exactly one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GgufSearchParams {
    /// A GGUF database built by `evopress build-db`.
    pub database: PathBuf,
    /// Ceiling on the bytes of the searched tensors' blocks.
    #[serde(default)]
    pub target_bytes: Option<u64>,
    /// Ceiling in bits per weight over the searched tensors.
    #[serde(default)]
    pub target_bpw: Option<f64>,
    /// The bytes llama.cpp's preset (`"Q4_K_M"`) gives the same tensors.
    #[serde(default)]
    pub target_preset: Option<String>,
    /// Rungs a mutation moves a tensor by.
    #[serde(default = "default_step")]
    pub step: i32,
}

fn default_step() -> i32 {
    1
}

/// One searched tensor: its stored rungs.
struct Tensor {
    name: String,
    rows: usize,
    cols: usize,
    /// The block whose input changes with it (the block count for an untied head).
    block: usize,
    ids: Vec<i32>,
    types: Vec<GgmlType>,
    bytes: Vec<u64>,
    errors: Vec<f64>,
    /// Loaded weights of the embedding and head (the linears' are in the table).
    outer: Vec<Weight>,
}

pub struct GgufBackend {
    table: VariantTable,
    tensors: Vec<Tensor>,
    /// The requested type of every rung, cheapest first (the manifest's `types`).
    rungs: Vec<String>,
    /// Index of the token embedding among `tensors`, if the database holds it.
    embedding: Option<usize>,
    tied: bool,
    shape: ModelShape,
    params: GgufSearchParams,
    space: Option<SearchSpace>,
}

impl GgufBackend {
    /// Opens the database and builds the space at the params' target.
    pub fn open(model: &Model, params: GgufSearchParams) -> Result<Self> {
        let mut b = Self::open_database(model, &params.database)?;
        let targets = [
            params.target_bytes.is_some(),
            params.target_bpw.is_some(),
            params.target_preset.is_some(),
        ];
        if targets.iter().filter(|&&t| t).count() != 1 {
            return Err(Error::Invalid(
                "[backend] (kind = \"gguf\") needs exactly one of target_bytes, target_bpw, \
                 target_preset"
                    .into(),
            ));
        }
        b.params = params;
        let max_cost = b.target_bytes()?;
        b.space = Some(b.build_space(max_cost)?);
        Ok(b)
    }

    /// Opens a database for reading configurations only.
    pub fn open_database(model: &Model, dir: &Path) -> Result<Self> {
        let table = VariantTable::open(model, dir, GGML_FORMAT, &load_ggml)?;
        let store = table.store();
        let n = model.layers.len();
        let describe = |name: &str, rows, cols, block, outer: bool| -> Result<Option<Tensor>> {
            let Some(entry) = store.unit(name) else {
                return Ok(None);
            };
            let mut ids: Vec<i32> = entry.levels.iter().map(|l| l.id).collect();
            ids.sort_unstable();
            let mut t = Tensor {
                name: name.into(),
                rows,
                cols,
                block,
                types: Vec::new(),
                bytes: Vec::new(),
                errors: Vec::new(),
                outer: Vec::new(),
                ids: ids.clone(),
            };
            for &id in &ids {
                let level = entry.level(id).expect("listed");
                t.types.push(level_type(store, entry, id)?);
                t.bytes.push(level.bytes);
                t.errors.push(level.rel_error);
                if outer {
                    t.outer.push(load_ggml(store, entry, id)?);
                }
            }
            Ok(Some(t))
        };
        let mut tensors = Vec::new();
        for u in table.units() {
            tensors.extend(describe(&u.name, u.rows, u.cols, u.block, false)?);
        }
        let (vocab, hidden) = (model.vocab_size(), model.hidden_size());
        tensors.extend(describe(EMBEDDING, vocab, hidden, 0, true)?);
        let embedding = tensors.iter().position(|t| t.name == EMBEDDING);
        let tied = model.config.tie_word_embeddings;
        if !tied {
            tensors.extend(describe(HEAD, vocab, hidden, n, true)?);
        }
        let cfg = &model.config;
        let rungs = (table.store().manifest().header.params.get("types"))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Ok(GgufBackend {
            table,
            rungs,
            tensors,
            embedding,
            tied,
            shape: ModelShape {
                n_layers: n,
                n_gqa: cfg.num_attention_heads / cfg.num_key_value_heads.max(1),
            },
            params: GgufSearchParams {
                database: dir.into(),
                target_bytes: None,
                target_bpw: None,
                target_preset: None,
                step: 1,
            },
            space: None,
        })
    }

    fn search_space(&self) -> &SearchSpace {
        self.space.as_ref().expect("a search backend has its space")
    }

    /// Weights in the searched tensors.
    pub fn numel(&self) -> u64 {
        self.tensors.iter().map(|t| (t.rows * t.cols) as u64).sum()
    }

    /// The searched tensors' names, in genome order.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    /// The budget in bytes of the params' target.
    fn target_bytes(&self) -> Result<u64> {
        let p = &self.params;
        if let Some(b) = p.target_bytes {
            return Ok(b);
        }
        if let Some(bpw) = p.target_bpw {
            if !(bpw.is_finite() && bpw > 0.0) {
                return Err(Error::Invalid(format!(
                    "[backend] target_bpw = {bpw} is not a positive number"
                )));
            }
            return Ok((bpw * self.numel() as f64 / 8.0).floor() as u64);
        }
        let preset = parse_preset(p.target_preset.as_deref().unwrap_or_default())?;
        Ok(self.bytes(&self.preset_indices(preset)?))
    }

    /// One group, every tensor starting at the lowest rung whose uniform size reaches the
    /// target (the search lowers tensors at random until the ceiling holds).
    fn build_space(&self, max_cost: u64) -> Result<SearchSpace> {
        let units: Vec<Unit> = (self.tensors.iter())
            .map(|t| Unit {
                name: t.name.clone(),
                group: 0,
                levels: (t.ids.iter().zip(&t.bytes))
                    .map(|(&id, &b)| Level::new(id, b))
                    .collect(),
            })
            .collect();
        let mut common: Vec<i32> = self.tensors[0].ids.clone();
        for t in &self.tensors {
            common.retain(|id| t.ids.contains(id));
        }
        let uniform = |id: i32| -> u64 {
            (self.tensors.iter())
                .map(|t| t.bytes[t.ids.iter().position(|&x| x == id).expect("common")])
                .sum()
        };
        let base = (common.iter().copied())
            .find(|&id| uniform(id) >= max_cost)
            .or(common.last().copied())
            .ok_or_else(|| Error::Invalid("the database's tensors share no type".into()))?;
        let groups = vec![Group {
            name: "all (tensor bytes)".into(),
            start: GroupStart::uniform(base),
        }];
        let budget = Budget::CostCeiling {
            max_cost,
            step: self.params.step,
        };
        Ok(SearchSpace::new(units, groups, budget)?)
    }

    /// Exact bytes of the searched tensors at level indices `idx`.
    pub fn bytes(&self, idx: &[u16]) -> u64 {
        (self.tensors.iter().zip(idx))
            .map(|(t, &l)| t.bytes[l as usize])
            .sum()
    }

    /// `model` with every searched tensor at its level index.
    pub fn assemble(&self, model: &Model, idx: &[u16]) -> Result<Model> {
        if idx.len() != self.tensors.len() {
            return Err(Error::Invalid(format!(
                "{} levels for {} tensors",
                idx.len(),
                self.tensors.len()
            )));
        }
        let n_lin = self.table.units().len();
        let mut out = self.table.assemble(model, &idx[..n_lin])?;
        for (t, &l) in self.tensors[n_lin..].iter().zip(&idx[n_lin..]) {
            let w = t.outer[l as usize].clone();
            if t.name == EMBEDDING {
                if self.tied {
                    out.lm_head = w.clone();
                }
                out.embed_tokens = w;
            } else {
                out.lm_head = w;
            }
        }
        Ok(out)
    }

    /// Level indices of llama.cpp's `preset`, restricted to the database's types: each
    /// tensor gets the lowest rung that holds the type llama.cpp would write for it.
    pub fn preset_indices(&self, preset: Preset) -> Result<Vec<u16>> {
        (self.tensors.iter())
            .map(|t| {
                let role = Role::of_unit(&t.name, self.tied).ok_or_else(|| {
                    Error::Invalid(format!("`{}`: no llama.cpp role is known", t.name))
                })?;
                let ty = preset_type(preset, role, layer_of(&t.name), t.cols, self.shape);
                t.types
                    .iter()
                    .position(|&x| x == ty)
                    .map(|i| i as u16)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                        "preset {preset} writes `{}` as {ty}, which the database does not hold \
                         for it (it has {}); add {ty} to the database's types",
                        t.name,
                        type_list(&t.types)
                    ))
                    })
            })
            .collect()
    }

    /// The types of level indices, by tensor name.
    pub fn types_of(&self, idx: &[u16]) -> Vec<(&str, GgmlType)> {
        (self.tensors.iter().zip(idx))
            .map(|(t, &l)| (t.name.as_str(), t.types[l as usize]))
            .collect()
    }

    /// Reads a result file (`[types]`, tensor name = ggml type) into level indices.
    pub fn read_types(&self, path: &Path) -> Result<Vec<u16>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let doc: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::format(path, format!("not TOML: {}", e.message())))?;
        let types = doc.get("types").and_then(|v| v.as_table()).ok_or_else(|| {
            Error::format(
                path,
                "no [types] table (tensor name = ggml type)".to_string(),
            )
        })?;
        if let Some(k) = types
            .keys()
            .find(|k| !self.tensors.iter().any(|t| &t.name == *k))
        {
            return Err(Error::format(
                path,
                format!("unknown tensor `{k}`: the database has no such tensor"),
            ));
        }
        (self.tensors.iter())
            .map(|t| {
                let v = types.get(&t.name).and_then(|v| v.as_str()).ok_or_else(|| {
                    Error::format(path, format!("`{}` has no type (a string)", t.name))
                })?;
                let ty = GgmlType::from_name(v).ok_or_else(|| {
                    Error::format(path, format!("`{}`: unknown type `{v}`", t.name))
                })?;
                t.types
                    .iter()
                    .position(|&x| x == ty)
                    .map(|i| i as u16)
                    .ok_or_else(|| {
                        Error::format(
                            path,
                            format!(
                                "`{}` = {ty}: the database holds {} for it",
                                t.name,
                                type_list(&t.types)
                            ),
                        )
                    })
            })
            .collect()
    }

    /// Bytes, bits per weight and the count of tensors per type.
    pub fn size_report(&self, idx: &[u16]) -> Report {
        let bytes = self.bytes(idx);
        let numel = self.numel();
        let bpw = 8.0 * bytes as f64 / numel.max(1) as f64;
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for (_, ty) in self.types_of(idx) {
            *counts.entry(ty.to_string()).or_default() += 1;
        }
        let mut t = toml::Table::new();
        t.insert("tensor_bytes".into(), (bytes as i64).into());
        t.insert("weights".into(), (numel as i64).into());
        t.insert("bits_per_weight".into(), bpw.into());
        let hist: toml::Table = counts.iter().map(|(k, &v)| (k.clone(), v.into())).collect();
        t.insert("tensors_per_type".into(), hist.into());
        let mix: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        Report {
            fields: t,
            summary: vec![format!(
                "ggml types: {bytes} bytes in the {} searched tensors ({bpw:.4} bits per \
                 weight): {}",
                self.tensors.len(),
                mix.join(", ")
            )],
        }
    }

    fn has_genome_under_budget(&self, idx: &[u16]) -> Option<Genome> {
        let space = self.search_space();
        let Budget::CostCeiling { max_cost, .. } = space.budget() else {
            return None;
        };
        (self.bytes(idx) <= *max_cost).then(|| Genome(idx.to_vec()))
    }
}

fn type_list(types: &[GgmlType]) -> String {
    let mut names: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    names.dedup();
    names.join(", ")
}

impl CompressionBackend for GgufBackend {
    fn name(&self) -> &'static str {
        "gguf"
    }

    fn space(&self) -> &SearchSpace {
        self.search_space()
    }

    fn evaluator<'a>(
        &'a self,
        model: &'a Model,
        dev: &'a dyn Device,
        cal: &'a Calibration,
        cache_cap_bytes: usize,
    ) -> Result<Box<dyn Evaluator + 'a>> {
        let unit_block = self.tensors.iter().map(|t| t.block).collect();
        let assemble = Box::new(move |g: &Genome| self.assemble(model, &g.0));
        let mut e = SwapEvaluator::new(model, dev, cal, unit_block, assemble, cache_cap_bytes);
        if let Some(u) = self.embedding {
            e = e.with_embedding_unit(u);
        }
        Ok(Box::new(e))
    }

    fn candidate(&self, model: &Model, genome: &Genome) -> Result<Candidate> {
        Ok(Candidate::dense(&self.assemble(model, &genome.0)?))
    }

    fn config_files(&self, genome: &Genome) -> Result<Vec<(String, String)>> {
        let mut text = String::from(
            "# One ggml type per tensor (evopress gguf search). Apply with\n\
             # `evopress convert --to gguf --gguf-config FILE --database DIR`.\n[types]\n",
        );
        for (name, ty) in self.types_of(&genome.0) {
            text.push_str(&format!("\"{name}\" = \"{ty}\"\n"));
        }
        Ok(vec![(CONFIG_FILE.into(), text)])
    }

    fn read_config(&self, dir: &Path) -> Result<Genome> {
        Ok(Genome(self.read_types(&dir.join(CONFIG_FILE))?))
    }

    fn report(&self, genome: &Genome, _candidate: &Candidate) -> Result<Report> {
        Ok(self.size_report(&genome.0))
    }

    fn baselines(&self) -> Vec<BaselineInfo> {
        let target = self
            .params
            .target_preset
            .as_deref()
            .and_then(Preset::from_name);
        let mut out = vec![
            BaselineInfo {
                name: "uniform".into(),
                about: "every tensor at the largest rung whose total fits the budget",
                cheap: true,
            },
            BaselineInfo {
                name: "dp".into(),
                about: "types minimising the sum of per-tensor rel_error under the budget (DP)",
                cheap: true,
            },
        ];
        for p in Preset::ALL {
            out.push(BaselineInfo {
                name: format!("preset-{p}"),
                about: "llama.cpp's preset mix (llama_tensor_get_type) in the database's types",
                cheap: Some(p) == target,
            });
        }
        for ty in &self.rungs {
            out.push(BaselineInfo {
                name: format!("uniform-{ty}"),
                about: "every tensor at this type (or llama.cpp's fallback where it cannot be)",
                cheap: false,
            });
        }
        out
    }

    fn baseline(&self, name: &str, ctx: &BaselineContext) -> Result<Baseline> {
        let space = self.search_space();
        let n = self.tensors.len();
        let mut detail = toml::Table::new();
        let idx: Vec<u16> = if name == "uniform" {
            let rungs = self.tensors[0].ids.len();
            let fits = (0..rungs as u16)
                .rev()
                .map(|l| vec![l; n])
                .find(|idx| self.has_genome_under_budget(idx).is_some());
            fits.ok_or_else(|| Error::Invalid("no uniform rung fits under the budget".into()))?
        } else if name == "dp" {
            let errors: Vec<Vec<f64>> = self.tensors.iter().map(|t| t.errors.clone()).collect();
            let genome = dp_allocate(space, &errors)?;
            let total: f64 = (genome.0.iter().zip(&errors))
                .map(|(&l, e)| e[l as usize])
                .sum();
            detail.insert("sum_rel_error".into(), total.into());
            genome.0
        } else if let Some(p) = name.strip_prefix("preset-") {
            self.preset_indices(parse_preset(p)?)?
        } else if let Some(rung) = (name.strip_prefix("uniform-"))
            .and_then(|ty| self.rungs.iter().position(|r| r.eq_ignore_ascii_case(ty)))
        {
            let id = rung as i32;
            (self.tensors.iter())
                .map(|t| t.ids.iter().position(|&i| i == id).map(|l| l as u16))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| Error::Invalid(format!("`{name}`: a tensor lacks rung {id}")))?
        } else {
            let known: Vec<String> = self.baselines().into_iter().map(|b| b.name).collect();
            return Err(Error::Invalid(format!(
                "gguf has no baseline `{name}`; it has {}",
                known.join(", ")
            )));
        };
        let genome = self.has_genome_under_budget(&idx);
        detail.insert("tensor_bytes".into(), (self.bytes(&idx) as i64).into());
        detail.insert("within_budget".into(), genome.is_some().into());
        Ok(Baseline {
            name: name.into(),
            candidate: Candidate::dense(&self.assemble(ctx.model, &idx)?),
            genome,
            detail,
        })
    }
}
