"""Leaderboard presets: ViDoRe v1, v2 and v3 as MTEB defines them (tasks, Hub datasets, pinned revisions, languages,
main score, query instruction), loaded into ``RetrievalData`` with MTEB's own query and page ids, and the protocol
the leaderboard scores a model family at (its pixel budget).

Each task is one dataset to every scorer (its corpus encoded once); its languages are subsets of its queries
(``hf_subset`` in MTEB's result files), scored from the same query x page scores. Where each value comes from is
written in docs/evaluation.md ("Leaderboard presets")."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset, load_dataset

from vdr.data.retrieval_sets import (
    BEIR_PARTS,
    QUERY_ID_COLUMNS,
    RetrievalData,
    _pick,
    beir_retrieval_data,
    check_retrieval_data,
)
from vdr.errors import VdrError
from vdr.evaluation.metrics import ModelScores
from vdr.hub import hub_file
from vdr.models.loading import ModelLoadingArguments

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

#: A local folder holding one sub-folder per benchmark dataset (named as the Hub id's last part, laid out as the Hub
#: repository: a README.md with a ``configs:`` block and its parquet files); overrides the Hub, e.g. for an offline
#: mirror or the tests' fixtures.
BENCHMARK_ROOT_ENV = "VDR_BENCHMARK_ROOT"
#: MTEB's split for every ViDoRe task, and the prefix its loaders give ids ("query-test-3", "corpus-test-17").
SPLIT = "test"

# The query instructions of MTEB's task metadata (``prompt={"query": ...}``), word for word.
V1_V2_INSTRUCTION = "Find a screenshot that relevant to the user's question."
V3_INSTRUCTION = "Find a screenshot that is relevant to the user's question."
ENGLISH = {"default": ["eng-Latn"]}
V2_LANGUAGES = {"french": ["fra-Latn"], "spanish": ["spa-Latn"], "english": ["eng-Latn"], "german": ["deu-Latn"]}
V3_LANGUAGES = {**V2_LANGUAGES, "italian": ["ita-Latn"], "portuguese": ["por-Latn"]}


@dataclass(frozen=True)
class BenchmarkTask:
    """One MTEB task: its name, Hub dataset (and the revision MTEB pins), languages (``hf_subset`` -> MTEB language
    codes; "default" for a task without a language column), main score and query instruction."""

    name: str
    path: str
    revision: str | None  # the revision read (None: the latest)
    languages: dict[str, list[str]]
    main_score: str
    instruction: str
    mteb_revision: str = ""  # the dataset revision MTEB's task pins (written in the result files)

    @property
    def multilingual(self) -> bool:
        return "default" not in self.languages


@dataclass(frozen=True)
class Benchmark:
    name: str  # the --benchmark value
    mteb_name: str  # MTEB's benchmark name (the leaderboard's)
    tasks: tuple[BenchmarkTask, ...]


def _v1(name: str, dataset: str, revision: str) -> BenchmarkTask:
    return BenchmarkTask(name, f"mteb/{dataset}", revision, ENGLISH, "ndcg_at_5", V1_V2_INSTRUCTION, revision)


def _v2(name: str, dataset: str, revision: str, languages: dict[str, list[str]] = V2_LANGUAGES) -> BenchmarkTask:
    return BenchmarkTask(name, f"vidore/{dataset}", revision, languages, "ndcg_at_5", V1_V2_INSTRUCTION, revision)


def _v3(name: str, dataset: str, mteb_revision: str) -> BenchmarkTask:
    # MTEB reads copies of these sets ("vidore/<dataset>_mteb_format", at mteb_revision); the originals are read
    # here, at their latest revision.
    return BenchmarkTask(name, f"vidore/{dataset}", None, V3_LANGUAGES, "ndcg_at_10", V3_INSTRUCTION, mteb_revision)


BENCHMARKS = {
    "vidore-v1": Benchmark(
        "vidore-v1",
        "ViDoRe(v1)",
        (
            _v1("VidoreArxivQARetrieval", "arxivqa_test_subsampled_beir", "179762404662be6bf48c30b4fb2b2ef8c6891290"),
            _v1("VidoreDocVQARetrieval", "docvqa_test_subsampled_beir", "e78cd130055fcb8d69bb0ff4115c4712a157f3d3"),
            _v1("VidoreInfoVQARetrieval", "infovqa_test_subsampled_beir", "74d396242cc281c021eeb38d0ee5f6f30afc1fad"),
            _v1("VidoreTabfquadRetrieval", "tabfquad_test_subsampled_beir", "24a4541c4c461f5ff4f4af4e97ec820715281a06"),
            _v1("VidoreTatdqaRetrieval", "tatdqa_test_beir", "dc7924ec102addd7f85c1ccfdd8625848179f615"),
            _v1("VidoreShiftProjectRetrieval", "shiftproject_test_beir", "78e6f5ad3bbc1af50ae9c0f006f57462213269fb"),
            _v1(
                "VidoreSyntheticDocQAAIRetrieval",
                "syntheticDocQA_artificial_intelligence_test_beir",
                "12c5b7a81fc19d66f1844642acdb88e8ad79af16",
            ),
            _v1(
                "VidoreSyntheticDocQAEnergyRetrieval",
                "syntheticDocQA_energy_test_beir",
                "eda52c9a0519252cfaacb7ae5e5da516b7d4b8cb",
            ),
            _v1(
                "VidoreSyntheticDocQAGovernmentReportsRetrieval",
                "syntheticDocQA_government_reports_test_beir",
                "ec534abea699035a18f9fd76f215277de9db9600",
            ),
            _v1(
                "VidoreSyntheticDocQAHealthcareIndustryRetrieval",
                "syntheticDocQA_healthcare_industry_test_beir",
                "81d53880628d641aaf7365f3b2e65f57c814ecca",
            ),
        ),
    ),
    "vidore-v2": Benchmark(
        "vidore-v2",
        "ViDoRe(v2)",
        (
            _v2("Vidore2ESGReportsRetrieval", "esg_reports_v2", "0542c0d03da0ec1c8cbc517c8d78e7e95c75d3d3"),
            _v2("Vidore2EconomicsReportsRetrieval", "economics_reports_v2", "b3e3a04b07fbbaffe79be49dabf92f691fbca252"),
            _v2(
                "Vidore2BioMedicalLecturesRetrieval",
                "biomedical_lectures_v2",
                "a29202f0da409034d651614d87cd8938d254e2ea",
            ),
            _v2(
                "Vidore2ESGReportsHLRetrieval",
                "esg_reports_human_labeled_v2",
                "6d467dedb09a75144ede1421747e47cf036857dd",
                ENGLISH,
            ),
        ),
    ),
    "vidore-v3": Benchmark(
        "vidore-v3",
        "ViDoRe(v3)",
        (
            _v3("Vidore3FinanceEnRetrieval", "vidore_v3_finance_en", "fa78cb14152b3dde8c5defdc4e3ddf50de69dfeb"),
            _v3("Vidore3IndustrialRetrieval", "vidore_v3_industrial", "f732b725cf4a70803210edfe265a04f8bd5328f6"),
            _v3(
                "Vidore3ComputerScienceRetrieval",
                "vidore_v3_computer_science",
                "fb7fb69f81f7db62790f40494124b8ad22b424ab",
            ),
            _v3(
                "Vidore3PharmaceuticalsRetrieval",
                "vidore_v3_pharmaceuticals",
                "237ed4f43c7fb3c4df07ec4e9dd0a4366be555b0",
            ),
            _v3("Vidore3HrRetrieval", "vidore_v3_hr", "bc7d43d64815ed30f664168c8052106484aba7fd"),
            _v3("Vidore3FinanceFrRetrieval", "vidore_v3_finance_fr", "8a2adfda85a7967c7252129703d9b3c7c9f038a9"),
            _v3("Vidore3PhysicsRetrieval", "vidore_v3_physics", "2c18ef90ab3ef93a9d86ecc6521cdae2a29f8300"),
            _v3("Vidore3EnergyRetrieval", "vidore_v3_energy", "84fca99e5978604bae30f2436eacb6dbaa0532e9"),
        ),
    ),
}

#: Language values a queries table may hold for each of MTEB's language subsets (v2 writes the English name).
LANGUAGE_ALIASES = {
    "english": ("english", "en", "eng", "eng-latn"),
    "french": ("french", "fr", "fra", "fra-latn"),
    "spanish": ("spanish", "es", "spa", "spa-latn"),
    "german": ("german", "de", "deu", "deu-latn"),
    "italian": ("italian", "it", "ita", "ita-latn"),
    "portuguese": ("portuguese", "pt", "por", "por-latn"),
}


@dataclass(frozen=True)
class SelectedTask:
    """A task chosen for this run: the benchmark it belongs to, and the language subsets to score."""

    benchmark: Benchmark
    task: BenchmarkTask
    subsets: tuple[str, ...]


def select_tasks(benchmarks: list[str], tasks: list[str], languages: list[str]) -> list[SelectedTask]:
    """The tasks of the ``--benchmark`` presets, kept to ``--tasks`` (MTEB task names) and ``--languages`` (MTEB
    subsets such as "french", or codes such as "fra-Latn"); a name that matches nothing is an error."""
    unknown = [name for name in benchmarks if name not in BENCHMARKS]
    if unknown:
        raise VdrError(f"--benchmark {', '.join(unknown)} is not known; choose from {', '.join(BENCHMARKS)}.")
    chosen = [(BENCHMARKS[name], task) for name in dict.fromkeys(benchmarks) for task in BENCHMARKS[name].tasks]
    all_names = [task.name for _, task in chosen]
    missing = [name for name in tasks if name not in all_names]
    if missing:
        raise VdrError(
            f"--tasks {', '.join(missing)} is not a task of --benchmark {', '.join(benchmarks)} (its tasks: "
            f"{', '.join(all_names)})."
        )
    selected = []
    for benchmark, task in chosen:
        subsets = tuple(subset for subset, codes in task.languages.items() if _wanted(subset, codes, languages))
        if (not tasks or task.name in tasks) and subsets:
            selected.append(SelectedTask(benchmark, task, subsets))
    if not selected:
        raise VdrError(
            f"--languages {', '.join(languages)} leaves no task to score (subsets are e.g. french, eng-Latn)."
        )
    return selected


def _wanted(subset: str, codes: list[str], languages: list[str]) -> bool:
    """Whether a subset is asked for: by its name (french), a language code (fra-Latn) or a code's language name."""
    wanted = {language.lower() for language in languages}
    names = {name for name, aliases in LANGUAGE_ALIASES.items() if any(code.lower() in aliases for code in codes)}
    return not languages or bool({subset, *names, *(code.lower() for code in codes)} & wanted)


@dataclass
class BenchmarkData:
    """A task loaded: its retrieval set (MTEB's ids) and the query ids of each language subset to score."""

    selected: SelectedTask
    data: RetrievalData
    subsets: dict[str, list[str]]


def benchmark_root() -> Path | None:
    root = os.environ.get(BENCHMARK_ROOT_ENV)
    return Path(root).expanduser() if root else None


def load_benchmark_task(selected: SelectedTask) -> BenchmarkData:
    """Read a task's corpus / queries / qrels configs with ``datasets.load_dataset``, from the Hub (at MTEB's
    revision) or from $VDR_BENCHMARK_ROOT/<dataset> (the same repository layout, read by the same calls)."""
    task, root = selected.task, benchmark_root()
    source = str(root / task.path.split("/")[-1]) if root else task.path
    revision = None if root else task.revision
    parts = {part: _load_part(source, part, revision, task.name, local=root is not None) for part in BEIR_PARTS}
    where = {part: f"Task {task.name}: {source} config '{part}' split '{SPLIT}'" for part in BEIR_PARTS}
    data = mteb_ids(beir_retrieval_data(parts["corpus"], parts["queries"], parts["qrels"], task.name, where))
    check_retrieval_data(data, task.name)
    subsets = query_subsets(parts["queries"], selected, data, where["queries"])
    return BenchmarkData(selected, data, subsets)


def _load_part(source: str, part: str, revision: str | None, task: str, local: bool) -> Dataset:
    # A local folder is read afresh: datasets' cache keys a local repository by its file names, not their content,
    # and would serve an earlier copy's rows after the folder changed.
    mode, check = ("force_redownload", "no_checks") if local else (None, None)
    try:
        return load_dataset(source, part, split=SPLIT, revision=revision, download_mode=mode)
    except Exception as error:  # hub, network, config and split errors come as many types
        raise VdrError(
            f"Task {task}: could not load '{source}' config '{part}' split '{SPLIT}' ({type(error).__name__}: "
            f"{error}). Check your network / HF_TOKEN, or set ${BENCHMARK_ROOT_ENV} to a folder holding a local copy."
        ) from None


def mteb_ids(data: RetrievalData) -> RetrievalData:
    """Ids as MTEB's loaders write them ("query-test-<id>", "corpus-test-<id>"): trec_eval breaks score ties by page
    id, so the same ids give the same ranking as the leaderboard's. Queries without judgements are dropped, as MTEB
    does."""
    query = {qid: f"query-{SPLIT}-{qid}" for qid in data.queries}
    page = {cid: f"corpus-{SPLIT}-{cid}" for cid in data.corpus}
    qrels = {query[qid]: {page[cid]: grade for cid, grade in docs.items()} for qid, docs in data.qrels.items()}
    queries = {query[qid]: text for qid, text in data.queries.items() if query[qid] in qrels}
    texts = None if data.texts is None else {page[cid]: text for cid, text in data.texts.items()}
    return RetrievalData(queries, {page[cid]: image for cid, image in data.corpus.items()}, qrels, texts)


def query_subsets(queries: Dataset, selected: SelectedTask, data: RetrievalData, where: str) -> dict[str, list[str]]:
    """The scored queries of each selected language subset (a task without languages has one, "default")."""
    if not selected.task.multilingual:
        return {"default": list(data.queries)}
    if "language" not in queries.column_names:
        raise VdrError(f"{where} has no 'language' column, which this multilingual task's subsets are read from.")
    ids = queries[_pick(queries, QUERY_ID_COLUMNS, where)]
    language_of = {f"query-{SPLIT}-{qid}": str(value).lower() for qid, value in zip(ids, queries["language"])}
    subsets = {}
    for subset in selected.subsets:
        subsets[subset] = [qid for qid in data.queries if language_of[qid] in LANGUAGE_ALIASES[subset]]
        if not subsets[subset]:
            seen = sorted(set(language_of.values()))
            raise VdrError(f"{where}: no query has language '{subset}' (the values it holds: {', '.join(seen)}).")
    return subsets


# ---------------------------------------------------------------------------------------------------------------------
# The protocol: instructions and pixel budgets as MTEB's model wrappers set them
# ---------------------------------------------------------------------------------------------------------------------

#: Per model family (the ``model_type`` of its config.json): the page-size bounds MTEB's wrapper loads it with and the
#: instruction documents get. Qwen3-VL-Embedding: mteb's ``Qwen3VLEmbeddingWrapper`` (min 4 * 32 * 32, max
#: 1800 * 32 * 32 pixels; documents "Represent the user's input.", queries the task's instruction).
LEADERBOARD_PROTOCOLS = {
    "qwen3_vl": {"min_pixels": 4 * 32 * 32, "max_pixels": 1800 * 32 * 32, "document": "Represent the user's input."},
}


@dataclass(frozen=True)
class Protocol:
    """How one model is scored on the benchmark tasks, recorded in the results."""

    family: str | None
    min_pixels: int | None
    max_pixels: int | None
    budget_source: str  # "leaderboard", "training" or "--max_pixels"
    trained_max_pixels: int | None
    document_instruction: str | None

    def query_instruction(self, task: BenchmarkTask) -> str | None:
        return task.instruction if self.family in LEADERBOARD_PROTOCOLS else None


def model_family(model_path: str) -> str | None:
    """A model's ``model_type`` from its config.json (a folder, or the Hub's file); None when unknown."""
    config = Path(model_path) / "config.json" if Path(model_path).is_dir() else hub_file(model_path, "config.json")
    if config is None or not Path(config).is_file():
        return None
    return json.loads(Path(config).read_text()).get("model_type")


def trained_max_pixels(model_path: str) -> int | None:
    """The page budget a model was trained at: vdr_training.json's max_pixels, else its saved image processor's."""
    folder = Path(model_path)
    record = folder / "vdr_training.json"
    if record.is_file() and json.loads(record.read_text()).get("max_pixels"):
        return int(json.loads(record.read_text())["max_pixels"])
    processor = _processor_config(model_path)
    if processor is None:
        return None
    pixels = processor.get("max_pixels") or (processor.get("size") or {}).get("longest_edge")
    return int(pixels) if pixels else None


def _processor_config(model_path: str) -> dict[str, Any] | None:
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = Path(model_path) / name if Path(model_path).is_dir() else hub_file(model_path, name)
        if path is not None and Path(path).is_file():
            config = json.loads(Path(path).read_text())
            return config.get("image_processor", config)
    return None


def leaderboard_protocol(
    model_path: str, budget: str, min_pixels: int | None, max_pixels: int | None, family: str | None = None
) -> Protocol:
    """The pixel budget and instructions a model is scored at: explicit --min/--max_pixels, else the leaderboard's
    (``budget="leaderboard"``, for a known family) or the one it was trained at. Warns when that differs from the
    budget it was trained at, giving both."""
    family = family if family is not None else model_family(model_path)
    trained = trained_max_pixels(model_path)
    known = LEADERBOARD_PROTOCOLS.get(family or "")
    document = known["document"] if known else None
    if max_pixels is not None or min_pixels is not None:
        protocol = Protocol(family, min_pixels, max_pixels, "--max_pixels", trained, document)
    elif budget == "leaderboard" and known:
        protocol = Protocol(family, known["min_pixels"], known["max_pixels"], "leaderboard", trained, document)
    else:
        protocol = Protocol(family, None, None, "training", trained, document)
    scored = protocol.max_pixels if protocol.max_pixels is not None else trained
    if trained is not None and scored is not None and scored != trained:
        logger.warning(
            "Model '%s' is scored at a page budget of %d pixels (%s) but was trained at %d pixels (its saved "
            "processor / vdr_training.json); pass --pixel_budget training to score it at its own budget.",
            model_path,
            scored,
            protocol.budget_source,
            trained,
        )
    return protocol


def load_benchmark_tasks(selected: list[SelectedTask]) -> dict[str, BenchmarkData]:
    """Every selected task loaded (and checked) once, before any model loads."""
    tasks = {}
    for choice in selected:
        tasks[choice.task.name] = task = load_benchmark_task(choice)
        logger.info(
            "Task %s: %d queries (%s), %d pages",
            choice.task.name,
            len(task.data.queries),
            ", ".join(f"{subset} {len(ids)}" for subset, ids in task.subsets.items()),
            len(task.data.corpus),
        )
    return tasks


def protocol_loading(loading: ModelLoadingArguments, protocol: Protocol | None) -> ModelLoadingArguments:
    """The loading options with the protocol's page budget (unchanged without a protocol, or at the training one)."""
    if protocol is None or protocol.budget_source != "leaderboard":
        return loading
    return replace(loading, min_pixels=protocol.min_pixels, max_pixels=protocol.max_pixels)


PromptGroup = tuple[str | None, str | None, dict[str, RetrievalData]]


def prompt_groups(
    datasets: dict[str, RetrievalData], tasks: dict[str, BenchmarkData], protocol: Protocol | None
) -> list[PromptGroup]:
    """The datasets grouped by the (query, document) prompts they are encoded with: a task gets its instruction
    under the protocol, every other dataset the model's own prompts (None, None)."""
    groups: dict[tuple[str | None, str | None], dict[str, RetrievalData]] = {}
    for name, data in datasets.items():
        query = protocol.query_instruction(tasks[name].selected.task) if protocol and name in tasks else None
        document = protocol.document_instruction if query else None
        groups.setdefault((query, document), {})[name] = data
    return [(query, document, group) for (query, document), group in groups.items()]


def score_by_prompts(
    model: SentenceTransformer,
    groups: list[PromptGroup],
    loading: ModelLoadingArguments,
    score: Callable[..., ModelScores],
) -> ModelScores:
    """``score`` each group of datasets with the model's prompts set to the group's (the prompts are part of the
    loading options the embedding cache keys on), the model's own prompts restored after."""
    scores = ModelScores()
    own = dict(model.prompts)
    try:
        for query, document, group in groups:
            if query is None:
                model.prompts = dict(own)
                scores.extend(score(datasets=group, loading=loading))
                continue
            model.prompts = {**own, "query": query, "document": document or own.get("document", "")}
            options = replace(loading, query_prompt=query, document_prompt=document)
            scores.extend(score(datasets=group, loading=options))
    finally:
        model.prompts = own
    return scores
