"""Retrieval sets in the rows and BEIR layouts: the recipe's corpus ids, graded qrels, Hub column names, page texts,
checks, and a set's identity by content."""

from __future__ import annotations

import pytest
from datasets import Dataset, Image

from vdr.data.retrieval_sets import (
    RetrievalData,
    beir_retrieval_data,
    check_retrieval_data,
    dataset_fingerprint,
    load_retrieval_data,
    retrieval_from_rows,
    write_rows_as_beir,
)
from vdr.data.sources import (
    DatasetSpec,
    SourceArguments,
    negative_columns_of,
)
from vdr.errors import VdrError
from vdr.offline.generated_pages import GENERATED_PAGES_ID


def test_recipe_eval_corpus_ids(generated_rows):
    dataset = Dataset.from_list(generated_rows[:5])
    data = retrieval_from_rows(dataset, "query", "image", ["negative_0", "negative_1"], "eval")
    assert len(data.queries) == 5 and len(data.corpus) == 15
    assert data.qrels == {i: {i: 1.0} for i in range(5)}
    # negative k of row i has id n*(k+1)+i; pages stay encoded until opened
    assert data.corpus[5 * 1 + 3].open().tobytes() == generated_rows[3]["negative_0"].tobytes()
    assert data.corpus[5 * 2 + 4].open().tobytes() == generated_rows[4]["negative_1"].tobytes()
    assert data.with_opened_pages().corpus[2].tobytes() == generated_rows[2]["image"].tobytes()
    assert data.relevant_docs() == {i: {i} for i in range(5)}


def test_beir_graded_relevance_and_hub_column_names():
    corpus = Dataset.from_dict({"corpus_id": [10, 11, 12], "image": ["a", "b", "c"]})
    queries = Dataset.from_dict({"query_id": ["q1", "q2"], "query": ["x", "y"]})
    qrels = Dataset.from_dict({"query_id": ["q1", "q1", "q2"], "corpus_id": [10, 12, 11], "score": [2, 1, 0]})
    data = beir_retrieval_data(corpus, queries, qrels, "vidore-like")
    assert data.qrels == {"q1": {10: 2.0, 12: 1.0}, "q2": {11: 0.0}}
    assert data.relevant_docs() == {"q1": {10, 12}, "q2": set()}  # grade 0 is not relevant


def test_qrels_with_unknown_ids_and_empty_corpus_are_reported():
    corpus = Dataset.from_dict({"corpus-id": ["d1"], "image": ["a"]})
    queries = Dataset.from_dict({"query-id": ["q1"], "query": ["x"]})
    qrels = Dataset.from_dict({"query-id": ["q1", "q9"], "corpus-id": ["d1", "d7"], "score": [1, 1]})
    data = beir_retrieval_data(corpus, queries, qrels, "bad")
    with pytest.raises(
        VdrError, match=r"Dataset 'bad': the qrels name 1 query id\(s\) that are not in the query table \(e\.g\. 'q9'\)"
    ):
        check_retrieval_data(data, "bad")
    data.qrels.pop("q9")
    data.qrels["q1"]["d7"] = 1.0
    with pytest.raises(VdrError, match=r"1 corpus id\(s\) that are not in the corpus table \(e\.g\. 'd7'\)"):
        check_retrieval_data(data, "bad")
    with pytest.raises(VdrError, match="has an empty corpus"):
        check_retrieval_data(type(data)({"q": "x"}, {}, {}), "empty")


def test_beir_folder_written_from_rows_round_trips(tmp_path, generated_rows):
    write_rows_as_beir(Dataset.from_list(generated_rows[:3]), tmp_path / "beir")
    data = load_retrieval_data(DatasetSpec.parse(str(tmp_path / "beir")))
    assert len(data.queries) == 3 and len(data.corpus) == 15
    assert data.qrels["q-1"] == {"page-1": 1.0}
    assert data.corpus["page-2-neg3"].open().tobytes() == generated_rows[2]["negative_3"].tobytes()


def test_dataset_spec_parsing():
    spec = DatasetSpec.parse("path=org/set,config=eval,name=hard,negative_columns=negative_0+negative_2,layout=rows")
    assert (spec.path, spec.config, spec.name, spec.negative_columns) == (
        "org/set",
        "eval",
        "hard",
        ("negative_0", "negative_2"),
    )
    assert DatasetSpec.parse("org/set").name == "set"
    with pytest.raises(VdrError, match="Unknown key 'confg' in --dataset .* Did you mean 'config'"):
        DatasetSpec.parse("path=org/set,confg=eval")


@pytest.fixture(scope="module")
def pages_data(vdr_cache):
    options = SourceArguments(num_generated_rows=24, generated_seed=4)
    return load_retrieval_data(DatasetSpec.parse(GENERATED_PAGES_ID), options)


def test_dataset_key_is_the_content(pages_data):
    key = dataset_fingerprint(pages_data)
    same = RetrievalData(dict(pages_data.queries), dict(pages_data.corpus), {})  # qrels do not change embeddings
    assert dataset_fingerprint(same) == key
    first_query = next(iter(pages_data.queries))
    other_text = RetrievalData({**pages_data.queries, first_query: "another query"}, pages_data.corpus, {})
    assert dataset_fingerprint(other_text) != key
    first_page = next(iter(pages_data.corpus))
    other_page = RetrievalData(pages_data.queries, {**pages_data.corpus, first_page: pages_data.corpus[1]}, {})
    assert dataset_fingerprint(other_page) != key


def test_page_texts_follow_their_pages_in_both_layouts(tmp_path, generated_rows):
    rows = Dataset.from_list(generated_rows[:3]).cast_column("image", Image())
    negatives = [f"negative_{k}" for k in range(4)]
    data = retrieval_from_rows(rows, "query", "image", negatives, "rows")
    assert data.texts[1] == generated_rows[1]["image_text"]
    assert data.texts[3 * 3 + 2] == generated_rows[2]["negative_2_text"]  # page id n * (k + 1) + i
    assert negative_columns_of(rows, None) == negatives  # a negative's text column is not a page column
    beir = load_retrieval_data(DatasetSpec.parse(str(write_rows_as_beir(rows, tmp_path / "beir"))))
    assert beir.texts["page-2-neg2"] == generated_rows[2]["negative_2_text"]
