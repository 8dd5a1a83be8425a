from strokeray.io.pseudonym import KEY_ENV, pseudonym


def test_pseudonym_is_stable_keyed_and_kind_separated(monkeypatch):
    a = pseudonym("MRN-1", "patient")
    assert a == pseudonym(" MRN-1 ", "patient") and len(a) == 16
    assert a != pseudonym("MRN-1", "study")
    assert "MRN" not in a
    monkeypatch.setenv(KEY_ENV, "hospital-secret")
    assert pseudonym("MRN-1", "patient") != a
    assert pseudonym(None, "patient") == "" and pseudonym("  ", "patient") == ""
