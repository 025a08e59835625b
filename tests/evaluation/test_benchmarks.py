"""Leaderboard presets: each ViDoRe layout read from a local copy through the same ``datasets`` calls as the Hub,
checked against mteb's own loaders; MTEB's figures checked against mteb's own metric code; the result files read
back by mteb; the pixel-budget warning exactly when the budgets differ."""

from __future__ import annotations

import json
import logging
import random

import datasets
import pytest
import torch
from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores, make_score_dict
from mteb.results import TaskResult

from evaluate_vdr import main, make_parser
from tests.evaluation.vidore_fixtures import write_vidore_fixture
from vdr.data.retrieval_sets import RetrievalData
from vdr.errors import VdrError
from vdr.evaluation.benchmarks import (
    BENCHMARK_ROOT_ENV,
    BENCHMARKS,
    V2_LANGUAGES,
    V3_INSTRUCTION,
    leaderboard_protocol,
    load_benchmark_task,
    select_tasks,
)
from vdr.evaluation.bm25 import bm25_index, bm25_scores
from vdr.evaluation.metrics import MTEB_K_VALUES, mteb_retrieval_scores

#: One task of each version, the folder its dataset is read from under $VDR_BENCHMARK_ROOT.
TASKS = {
    "vidore-v1": ("VidoreTabfquadRetrieval", "tabfquad_test_subsampled_beir"),
    "vidore-v2": ("Vidore2ESGReportsRetrieval", "esg_reports_v2"),
    "vidore-v3": ("Vidore3HrRetrieval", "vidore_v3_hr"),
}


def mteb_figures(scores: torch.Tensor, data: RetrievalData, query_ids: list[str]) -> dict[str, float]:
    """mteb's own ``calculate_retrieval_scores`` on each query's top 1000 pages, as its retrieval evaluator hands
    them over (without the nAUC figures, which the result files leave out)."""
    corpus_ids, rows = list(data.corpus), {qid: row for row, qid in enumerate(data.queries)}
    results = {}
    for qid in query_ids:
        values, pages = scores[rows[qid]].float().topk(min(1000, scores.shape[1]))
        results[qid] = {corpus_ids[page]: value for value, page in zip(values.tolist(), pages.tolist())}
    qrels = {qid: {cid: int(grade) for cid, grade in data.qrels[qid].items()} for qid in query_ids}
    r = calculate_retrieval_scores(results, qrels, MTEB_K_VALUES)
    return make_score_dict(
        ndcg=r.ndcg,
        _map=r.map,
        recall=r.recall,
        precision=r.precision,
        mrr=r.mrr,
        naucs={},
        naucs_mrr={},
        hit_rate=r.hit_rate,
        task_scores={},
    )


def test_figures_equal_mtebs_metric_code_with_graded_judgements_and_ties():
    generator, rng = torch.Generator().manual_seed(0), random.Random(0)
    scores = torch.randint(0, 20, (30, 1200), generator=generator).float() / 7  # many ties, past the top 1000 too
    queries = {f"query-test-{i}": f"q{i}" for i in range(30)}
    corpus = {f"corpus-test-{i}": None for i in range(1200)}
    qrels = {qid: {f"corpus-test-{rng.randrange(1200)}": rng.choice([1, 2]) for _ in range(3)} for qid in queries}
    qrels["query-test-0"] = {"corpus-test-5": 0}  # judged, nothing relevant: counts as 0, as in MTEB
    data = RetrievalData(queries, corpus, qrels)
    ours = mteb_retrieval_scores(scores, data, list(queries))
    assert ours == mteb_figures(scores, data, list(queries))
    assert list(ours) == list(mteb_figures(scores, data, list(queries)))  # the same keys, in mteb's order


@pytest.fixture()
def benchmark_root(tmp_path, monkeypatch):
    # datasets keys a local repository's cache by its file names: each test reads its own fixture, not another's
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    root = tmp_path / "hub"
    written = {version: write_vidore_fixture(version, root / folder) for version, (_, folder) in TASKS.items()}
    monkeypatch.setenv(BENCHMARK_ROOT_ENV, str(root))
    return root, written


@pytest.mark.parametrize("version", ["vidore-v1", "vidore-v2"])
def test_v1_and_v2_load_as_mtebs_own_loaders_load_them(benchmark_root, version):
    from mteb.tasks.retrieval.eng.vidore_bench_retrieval import _load_data as load_v1
    from mteb.tasks.retrieval.multilingual.vidore2_bench_retrieval import _load_data as load_v2

    root, _ = benchmark_root
    task_name, folder = TASKS[version]
    (selected,) = select_tasks([version], [task_name], [])
    ours = load_benchmark_task(selected)
    if version == "vidore-v1":
        corpus, queries, qrels = load_v1(str(root / folder), ["test"])
        by_subset = {"default": (corpus["test"], queries["test"], qrels["test"])}
    else:
        corpus, queries, qrels = load_v2(str(root / folder), ["test"], langs=list(V2_LANGUAGES))
        by_subset = {lang: (corpus[lang]["test"], queries[lang]["test"], qrels[lang]["test"]) for lang in corpus}
    assert set(ours.subsets) == set(by_subset)
    for subset, (their_corpus, their_queries, their_qrels) in by_subset.items():
        assert list(ours.data.corpus) == their_corpus["id"]
        assert ours.subsets[subset] == their_queries["id"]
        assert [ours.data.queries[qid] for qid in ours.subsets[subset]] == their_queries["text"]
        assert {qid: ours.data.qrels[qid] for qid in ours.subsets[subset]} == {
            qid: their_qrels[qid] for qid in their_queries["id"]
        }


def test_v3_keeps_grades_languages_and_markdown(benchmark_root):
    _, written = benchmark_root
    (selected,) = select_tasks(["vidore-v3"], ["Vidore3HrRetrieval"], ["english", "deu-Latn"])
    task = load_benchmark_task(selected)
    expected = written["vidore-v3"]
    assert set(task.subsets) == {"english", "german"}  # kept to --languages (a subset name or a language code)
    german = list(expected["queries"]["language"]).index("german")  # its first query's row
    assert task.subsets["german"] == [f"query-test-{expected['queries']['query_id'][german + i]}" for i in range(6)]
    assert task.data.qrels["query-test-0"] == {"corpus-test-0": 2.0, "corpus-test-6": 1.0}
    assert task.data.texts["corpus-test-7"] == expected["texts"][7]  # the OCR markdown, for BM25
    assert len(task.data.corpus) == 12


def test_presets_hold_mtebs_tasks_and_unknown_names_are_refused():
    import mteb

    for name, mteb_name in (("vidore-v1", "ViDoRe(v1)"), ("vidore-v2", "ViDoRe(v2)"), ("vidore-v3", "ViDoRe(v3)")):
        theirs = {task.metadata.name: task.metadata for task in mteb.get_benchmark(mteb_name).tasks}
        for task in BENCHMARKS[name].tasks:
            meta = theirs[task.name]
            assert (task.main_score, task.mteb_revision) == (meta.main_score, meta.revision)
            assert task.instruction == meta.prompt["query"]
            assert task.languages == (
                meta.eval_langs if isinstance(meta.eval_langs, dict) else {"default": ["eng-Latn"]}
            )
        public = [task for task, meta in theirs.items() if meta.is_public]
        assert [task.name for task in BENCHMARKS[name].tasks] == public
    with pytest.raises(VdrError, match="vidore-v9 is not known"):
        select_tasks(["vidore-v9"], [], [])
    with pytest.raises(VdrError, match="NoSuchTask is not a task"):
        select_tasks(["vidore-v3"], ["NoSuchTask"], [])


def test_benchmark_run_writes_the_table_and_mteb_result_files(benchmark_root, tmp_path, st_model_dir, caplog):
    argv = "--benchmark vidore-v3 --tasks Vidore3HrRetrieval --model bm25 --batch_size 4".split()
    args = make_parser().parse([*argv, "--model", str(st_model_dir), "--output_dir", str(tmp_path / "out")])
    with caplog.at_level(logging.WARNING):
        result = main(*args)
    out = tmp_path / "out"
    table = (out / "leaderboard.md").read_text()
    assert "ViDoRe(v3): NDCG@10" in table and "| bm25 |" in table and "| tiny-st |" in table
    # the protocol: Qwen3-VL's leaderboard budget, the task's instruction, recorded; the warning names both budgets
    protocol = result["models"]["tiny-st"]["protocol"]
    assert (protocol["max_pixels"], protocol["trained_max_pixels"]) == (1800 * 32 * 32, 36864)
    assert "1843200 pixels (leaderboard) but was trained at 36864 pixels" in caplog.text
    saved = json.loads((out / "results.json").read_text())["metadata"]["models"]["tiny-st"]["protocol"]
    assert saved["document_instruction"] == "Represent the user's input."
    # the result files are MTEB's: mteb reads them; BM25's figures are mteb's own metric code on BM25's scores
    (selected,) = select_tasks(["vidore-v3"], ["Vidore3HrRetrieval"], [])
    task = load_benchmark_task(selected)
    bm25 = bm25_scores(bm25_index(list(task.data.texts.values())), list(task.data.queries.values()))
    read = TaskResult.from_disk(out / "mteb_results" / "bm25" / "no_revision_available" / "Vidore3HrRetrieval.json")
    assert read.task_name == "Vidore3HrRetrieval" and len(read.scores["test"]) == 6
    for entry in read.scores["test"]:
        expected = mteb_figures(bm25, task.data, task.subsets[entry["hf_subset"]])
        assert entry["main_score"] == expected["ndcg_at_10"]
        assert entry["languages"] == selected.task.languages[entry["hf_subset"]]
        assert {key: entry[key] for key in expected} == pytest.approx(expected, abs=1e-6)
    assert saved["query_instructions"] == {"Vidore3HrRetrieval": V3_INSTRUCTION}


def test_pixel_budget_warning_appears_exactly_when_the_budgets_differ(st_model_dir, caplog):
    path = str(st_model_dir)  # trained (saved) at 36864 pixels
    cases = [
        (("leaderboard", None, None), True),
        (("training", None, None), False),
        (("leaderboard", None, 36864), False),
        (("leaderboard", None, 65536), True),
    ]
    for (budget, min_pixels, max_pixels), warns in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            protocol = leaderboard_protocol(path, budget, min_pixels, max_pixels)
        assert ("was trained at 36864 pixels" in caplog.text) is warns, (budget, max_pixels, caplog.text)
        assert protocol.trained_max_pixels == 36864


def test_task_instructions_reach_the_encoder_and_other_datasets_keep_the_models_prompts(
    benchmark_root, tmp_path, st_model_dir, monkeypatch
):
    import vdr.evaluation.encoding as encoding

    seen = []
    original = encoding.encode_batch

    def spy(model, inputs, kind, *args, **kwargs):
        seen.append((len(inputs), kind, model.prompts.get("query"), model.prompts.get("document")))
        return original(model, inputs, kind, *args, **kwargs)

    monkeypatch.setattr(encoding, "encode_batch", spy)
    argv = "--benchmark vidore-v3 --tasks Vidore3HrRetrieval --dataset generated:pages --num_generated_rows 4"
    argv += " --max_pixels 36864 --no_cache true --batch_size 64"
    main(*make_parser().parse([*argv.split(), "--model", str(st_model_dir), "--output_dir", str(tmp_path / "o")]))
    # the task's 36 queries with its instruction and its pages with the document one; the generated pages' 4 queries
    # with the model's own prompts (empty: none saved)
    assert (36, "query", V3_INSTRUCTION, "Represent the user's input.") in seen
    assert (12, "document", V3_INSTRUCTION, "Represent the user's input.") in seen
    assert (4, "query", "", "") in seen and (20, "document", "", "") in seen


def test_leaderboard_pages_are_resized_once_per_budget_on_disk(benchmark_root, tmp_path, st_model_dir, monkeypatch):
    monkeypatch.setenv("VDR_CACHE", str(tmp_path / "vdr-cache"))  # no pages resized by earlier tests
    argv = "--benchmark vidore-v3 --tasks Vidore3HrRetrieval --languages english --no_cache true".split()
    runs = []
    for output in ("a", "b"):
        args = make_parser().parse([*argv, "--model", str(st_model_dir), "--output_dir", str(tmp_path / output)])
        runs.append(main(*args))
    first, second = (run["models"]["tiny-st"]["stats"]["Vidore3HrRetrieval"] for run in runs)
    assert (first["page_preprocessings"], second["page_preprocessings"]) == (12, 0)  # the second run read them back
    assert first["page_encodings"] == second["page_encodings"] == 12  # no embedding cache: both encoded
    assert runs[0]["records"] == runs[1]["records"]
    assert len(list((tmp_path / "vdr-cache" / "train-pages").glob("*/*.png"))) == 12


def test_rerankers_take_part_like_any_model(benchmark_root, tmp_path, st_model_dir):
    argv = "--benchmark vidore-v3 --tasks Vidore3HrRetrieval --languages english --reranker generated:tiny-qwen3-vl"
    argv += " --rerank_top_k 3 --max_pixels 36864"
    main(*make_parser().parse([*argv.split(), "--model", str(st_model_dir), "--output_dir", str(tmp_path / "o")]))
    assert "| tiny-st + tiny-qwen3-vl |" in (tmp_path / "o" / "leaderboard.md").read_text()
    folder = tmp_path / "o" / "mteb_results" / "tiny-st_+_tiny-qwen3-vl" / "no_revision_available"
    read = TaskResult.from_disk(folder / "Vidore3HrRetrieval.json")
    assert [entry["hf_subset"] for entry in read.scores["test"]] == ["english"]
    with pytest.raises(VdrError, match="leaves no task to score"):
        select_tasks(["vidore-v3"], [], ["klingon"])
