"""The Defect families page under AppTest: Pareto of the seeded families, examples, naming
(that a name sticks to later members is tested in tests/storage/test_families.py)."""

from __future__ import annotations

from tests.dashboard.conftest import SeedConfig, seed_families, seed_file

PAGE = "views/families.py"


def test_empty_history_says_so(seeded_db, make_app) -> None:
    url, _ = seeded_db
    at = make_app(url)
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("No flagged regions" in i.value for i in at.info)


def test_families_are_listed_and_a_name_sticks(make_app, tmp_path) -> None:
    url, _ = seed_file(tmp_path / "fam.sqlite", SeedConfig(results=800, images=30, products=("bolt",)))
    counts = seed_families(url, types=3)
    at = make_app(url)
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    subs = [s.value for s in at.subheader]
    assert len(subs) == 3 and all("regions" in s for s in subs)
    shown = sorted(int(s.split("·")[1].split("regions")[0]) for s in subs)
    assert shown == sorted(counts.values())
    assert len(at.get("image")) >= 3 * 2  # example crops and one location map per family
    assert len(at.get("vega_lite_chart")) >= 1 + 3  # the Pareto chart and a control chart per family

    first = at.text_input[0]
    fid = first.key.rsplit("_", 1)[1]
    first.set_value("blowhole").run()
    at.button(key=f"save_{first.key}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("renamed" in s.value for s in at.success)
    assert any(s.value.startswith(f"#{fid} blowhole") for s in at.subheader)

