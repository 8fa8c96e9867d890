"""The mesh page shows this node's reachability and the path to each connected member."""

from __future__ import annotations

from types import SimpleNamespace

from meshcloud.web.mesh import mesh_context
from meshcloud.web.render import render


def test_mesh_cards_show_reachability_and_paths():
    me, relayed, punched, other = (bytes([i]) * 32 for i in (1, 2, 3, 4))
    members = [{"id": x.hex(), "state": "alive", "incarnation": 0, "addresses": [],
                "capacity": {}, "last_change": 0} for x in (me, relayed, punched, other)]
    status = {"state": "direct after punch",
              "paths": {relayed.hex(): "relayed", punched.hex(): "direct after punch"}}
    node = SimpleNamespace(node_id=me, members_view=lambda: members, is_admin=False,
                           records=SimpleNamespace(revocations=lambda: []),
                           nat=SimpleNamespace(status=lambda: status))
    context = mesh_context(node)
    reach = {m["id"]: m["reach"] for m in context["members"]}
    assert reach == {me.hex(): "direct after punch", relayed.hex(): "relayed",
                     punched.hex(): "direct after punch", other.hex(): None}
    html = render("_mesh.html", **context).body.decode()
    assert 'data-reach="relayed"' in html and html.count('data-reach="direct after punch"') == 2
    assert ">reachability</dt>" in html and ">path</dt>" in html
