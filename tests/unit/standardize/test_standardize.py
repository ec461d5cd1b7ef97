import pytest

from nearline.io.codec import Codec, CodecError
from nearline.marketplace.generate import read_table
from nearline.marketplace.taxonomy import Taxonomies
from nearline.standardize.processors import StandardizationError, make_processor, normalize
from nearline.standardize.runner import standardize_message


@pytest.fixture(scope="module")
def tax(marketplace_dir):
    return Taxonomies.load(marketplace_dir / "taxonomies.json")


def test_normalize_expands_abbreviations():
    assert normalize("Sr. Software Eng") == "senior software engineer"
    assert normalize("  DATA   scientist!! ") == "data scientist"


@pytest.mark.parametrize("processor,feature,truth,min_acc", [
    ("title", "title", "occupation", 0.93), ("title", "seniority", "seniority", 0.9),
    ("company", "company", "company_id", 0.93), ("geo", "geo", "geo_id", 0.98)])
def test_processors_recover_the_latent_ids(tax, marketplace_dir, processor, feature, truth, min_acc):
    rows = read_table(marketplace_dir, "members").to_pylist()
    p = make_processor(processor, tax)
    acc = sum(p.standardize(r)[feature]["ids"][0] == r[truth] for r in rows) / len(rows)
    assert acc >= min_acc, acc


def test_skills_recovers_sets_through_synonyms_and_typos(tax, marketplace_dir):
    rows = read_table(marketplace_dir, "jobs").to_pylist()
    p = make_processor("skills", tax)
    exact = sum(set(p.standardize(r)["skills"]["ids"]) == set(r["skill_ids"]) for r in rows) / len(rows)
    assert exact > 0.9
    out = p.standardize({"skills": "ML; k8s | Golang,  ms excel"})["skills"]
    names = {tax.skills[i] for i in out["ids"]}
    assert names == {"machine learning", "kubernetes", "go", "excel"}
    assert len(out["weights"]) == len(out["ids"])


def test_unknown_text_maps_to_id_zero_not_an_error(tax):
    assert make_processor("geo", tax).standardize({"location": "Atlantis"})["geo"]["ids"] == [0]


def test_bad_messages_raise_for_dead_lettering(tax):
    c, p = Codec(), make_processor("title", tax)
    with pytest.raises(CodecError):
        standardize_message(p, c, b"not avro", 0)
    upd = {"entity_type": "job", "entity_id": "j", "version": 1, "op": "UPSERT", "event_time": 0, "fields": {"company": "x"}}
    with pytest.raises(StandardizationError, match="title"):
        standardize_message(p, c, c.encode("EntityUpdate", upd), 0)
    delete = {**upd, "op": "DELETE", "fields": {}}
    assert standardize_message(p, c, c.encode("EntityUpdate", delete), 0) is None
    ok = {**upd, "fields": {"title": "Senior Nurse"}}
    key, value = standardize_message(p, c, c.encode("EntityUpdate", ok), 5)
    out = c.decode(value, expect="StandardizedFeatures")
    assert key == "job:j" and out["version"] == 1 and out["processor"] == "title"
    assert tax.seniority[out["features"]["seniority"]["ids"][0]] == "senior"


def test_limits_are_checked_before_decoding_and_before_standardizing():
    """A 300 KB raw field would cost seconds of fuzzy matching: it is refused first (issue 13)."""
    import time

    import pytest

    from nearline.core.validate import Limits, Rejected
    from nearline.io.codec import Codec
    from nearline.standardize.runner import standardize_message

    class Exploding:  # a processor that must never be reached
        name = "title"

        def standardize(self, fields):
            raise AssertionError("standardized despite the limits")

    c = Codec()
    upd = {"entity_type": "member", "entity_id": "m1", "version": 1, "op": "UPSERT", "event_time": 0,
           "fields": {"title": "engineer " * 35_000}}
    t0 = time.perf_counter()
    with pytest.raises(Rejected, match="bad_raw_fields"):
        standardize_message(Exploding(), c, c.encode("EntityUpdate", upd), 0, Limits(max_message_bytes=10**6))
    with pytest.raises(Rejected, match="oversize"):
        standardize_message(Exploding(), c, c.encode("EntityUpdate", upd), 0, Limits())
    with pytest.raises(Rejected, match="bad_version"):
        standardize_message(Exploding(), c, c.encode("EntityUpdate", {**upd, "version": -5, "fields": {}}), 0)
    assert time.perf_counter() - t0 < 1.0


def test_the_match_cache_keeps_only_short_texts():
    from nearline.standardize.processors import AliasMatcher

    m = AliasMatcher(["", "python", "java"], {"python": ["py"]})
    long_text = "python " + "x" * 300
    assert m.match("py") == 1 and m.match("py") == 1
    m.match(long_text)
    assert m._cached.cache_info().currsize == 1  # the long text was matched but not cached
