import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from trainables.config import DataConfig
from trainables.data import build_splits, collate, load_encoded
from trainables.metrics import compute_metrics, majority_score
from trainables.models import load_tokenizer, resolve_model


def test_major_metrics_and_components():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    m = compute_metrics("mcc", p, y)
    assert m["score"] == pytest.approx(matthews_corrcoef(y, p))
    m = compute_metrics("acc_f1", p, y)
    assert m["score"] == pytest.approx(((p == y).mean() + f1_score(y, p)) / 2) and set(m) == {"accuracy", "f1", "score"}
    y3, p3 = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    m = compute_metrics("acc_macro_f1", p3, y3, num_classes=3)
    assert m["score"] == pytest.approx(((p3 == y3).mean() + f1_score(y3, p3, average="macro")) / 2)
    a, b = rng.normal(size=50), rng.normal(size=50)
    m = compute_metrics("pearson_spearman", a, b)
    assert m["score"] == pytest.approx((stats.pearsonr(a, b)[0] + stats.spearmanr(a, b)[0]) / 2)
    assert compute_metrics("accuracy", p, y)["score"] == pytest.approx((p == y).mean())
    assert majority_score("accuracy", np.array([0, 0, 1])) == pytest.approx(2 / 3)


def test_macro_f1_averages_over_the_tasks_classes():
    """A split without some class still averages over every class of the task (the count comes from the
    task table), as jiant does: F1 of an absent, never-predicted class counts as 0."""
    y, p = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])  # perfect, but class 2 never occurs
    assert compute_metrics("acc_macro_f1", p, y, num_classes=2)["macro_f1"] == pytest.approx(1.0)
    assert compute_metrics("acc_macro_f1", p, y, num_classes=3)["macro_f1"] == pytest.approx(2 / 3)
    y5, p5 = np.array([0, 1, 2, 3, 4]), np.array([0, 1, 2, 3, 4])
    assert compute_metrics("acc_macro_f1", p5, y5, num_classes=5)["macro_f1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="give num_classes"):
        compute_metrics("acc_macro_f1", p, y)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("minilm-l6"))


def test_cache_is_built_once_and_keyed_on_data_and_tokenizer_settings(tmp_path, data_dir, tokenizer):
    import shutil

    shutil.copytree(data_dir / "CB", tmp_path / "data" / "CB")
    cfg = DataConfig(dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    train, dev = load_encoded("CB", tokenizer, 64, cfg)
    files = list((tmp_path / "cache").glob("CB-*.pt"))
    assert len(files) == 1 and len(train) == 250 and len(dev) == 56
    mtime = files[0].stat().st_mtime_ns
    again, _ = load_encoded("CB", tokenizer, 64, cfg)
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(again.tokens, train.tokens)
    load_encoded("CB", tokenizer, 32, cfg)  # another max length: another entry
    assert len(list((tmp_path / "cache").glob("CB-*.pt"))) == 2
    path = tmp_path / "data" / "CB" / "train.jsonl"
    path.write_text(path.read_text().replace("entailment", "contradiction", 1))  # data changed: new key
    load_encoded("CB", tokenizer, 64, cfg)
    assert len(list((tmp_path / "cache").glob("CB-*.pt"))) == 3


@pytest.mark.parametrize("task,shape", [("CB", 2), ("COPA", 3), ("WSC", 2)])
def test_batches_pad_dynamically(task, shape, data_dir, tokenizer, tmp_path):
    splits = build_splits(task, tokenizer, 128, DataConfig(dir=str(data_dir), cache_dir=str(tmp_path)), None)
    batch = collate(splits.train, [0, 1, 2], tokenizer.pad_token_id, torch.device("cpu"))
    assert batch["input_ids"].dim() == shape
    lengths = batch["attention_mask"].sum(-1)
    assert int(lengths.max()) == batch["input_ids"].shape[-1]  # padded to the longest, not to max length
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_wsc_spans_point_at_the_span_words(data_dir, tokenizer, tmp_path):
    from trainables.tasks import load_task

    records, _ = load_task("WSC", data_dir)
    train, _ = load_encoded("WSC", tokenizer, 128, DataConfig(dir=str(data_dir), cache_dir=str(tmp_path)))
    batch = collate(train, [0, 1], tokenizer.pad_token_id, torch.device("cpu"))
    for row in range(2):
        for key in ("span1", "span2"):
            s, e = batch[key][row].tolist()
            text = tokenizer.decode(batch["input_ids"][row][s:e])
            start, end = records[row][key]
            assert text == " ".join(records[row]["words"][start:end]).lower().rstrip(".,")


def test_a_byte_level_bpe_reads_sentences_without_and_word_lists_with_a_space_before_each_word(tmp_path):
    """RoBERTa's fine-tuning reads "The cat" as ["The", "Ġcat"]; only WSC's word lists need a space before each
    word (the first too). A tiny byte-level BPE (RoBERTa's kind) built here stands in for roberta-base."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["The premise is true and the cat sat."] * 20, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                         unk_token="<unk>", mask_token="<mask>").save_pretrained(tmp_path)
    plain = AutoTokenizer.from_pretrained(tmp_path)  # what RoBERTa's own fine-tuning uses
    sentences, words = load_tokenizer(str(tmp_path)), load_tokenizer(str(tmp_path), words=True)
    assert sentences("The cat sat.").input_ids == plain("The cat sat.").input_ids
    assert words([["The", "cat", "sat."]], is_split_into_words=True).input_ids[0] == plain(" The cat sat.").input_ids
