"""The Databases page fragment renders what the overview holds (and never a password)."""

from __future__ import annotations

from apps.db.ui import TEMPLATES
from meshcloud.web.render import render_text, use_templates

DB = {"name": "shop", "port": 15432, "ro_port": 15433, "standbys": 1, "version": 15,
      "home": "aa" * 32, "primary": "aa" * 32, "restored_from": "", "restored_at": "",
      "error": "", "backups": [{"label": "20261207-050000F", "type": "full",
                                "start": 1796619000, "stop": 1796619100,
                                "size": 31_000_000, "repo_size": 6_000_000}],
      "members": [{"node": "aa" * 32, "role": "primary", "healthy": True, "term": 3,
                   "alive": True, "lsn": 5000, "port": 1, "lag_bytes": None},
                  {"node": "bb" * 32, "role": "standby", "healthy": True, "term": 0,
                   "alive": True, "lsn": 4000, "port": 2, "lag_bytes": 1000,
                   "synchronous": True}]}


def test_fragment_shows_members_lag_backups_and_actions():
    use_templates(TEMPLATES)
    html = render_text("_databases.html", databases=[DB], host="127.0.0.1", example="{}")
    assert 'data-db="shop"' in html and "primary up" in html
    assert 'data-role="primary" data-node="' + "aa" * 32 in html and "term 3" in html
    assert 'data-role="standby"' in html and "lag 1000 B" in html
    assert "synchronous" in html and "not yet synchronous" not in html
    assert "15433" in html and 'data-label="20261207-050000F"' in html
    for action in ("/v1/db/shop/backup", "/v1/db/shop/failover", "/v1/db/shop/restore",
                   "/v1/db/shop/url"):
        assert action in html
    down = {**DB, "primary": None, "backups": [], "error": "pg_ctl exited 1",
            "members": [{**DB["members"][1], "alive": False}]}
    html = render_text("_databases.html", databases=[down], host="h", example="{}")
    assert "no primary" in html and "node down" in html and "none yet" in html
    assert "not yet synchronous" in render_text(
        "_databases.html", databases=[{**DB, "members": [{**DB["members"][1],
                                                          "synchronous": False}]}],
        host="h", example="{}")
    assert "pg_ctl exited 1" in html
    assert "No database yet" in render_text("_databases.html", databases=[], host="h",
                                            example="{}")
