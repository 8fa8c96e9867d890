"""The Spark page's fragment: master, registered workers, applications, jobs, links."""

from __future__ import annotations

from apps.spark.ui import TEMPLATES
from meshcloud.web.render import render_text, use_templates

CLUSTER = {
    "workers": 3, "worker_memory_mb": 512, "worker_cores": 1, "rpc_port": 17077,
    "ui_port": 17078, "master_url": "spark://127.0.0.71:17077",
    "ui_url": "http://127.0.0.71:17078/", "master_node": "ab" * 16, "master": [],
    "worker_replicas": [], "log_bucket": "spark-logs"}
VIEW = {
    "status": "ALIVE", "url": "spark://127.0.0.71:40000",
    "workers": [{"host": "127.0.0.72", "port": 4242, "state": "ALIVE", "cores": 1,
                 "coresused": 1, "memory": 512, "memoryused": 512,
                 "webuiaddress": "http://127.0.0.72:4243",
                 "ui_url": "http://127.0.0.71:17078/proxy/worker-20261207050000-h-4242/"}],
    "activeapps": [{"id": "app-20261207050000-0001", "name": "wordcount", "cores": 1,
                    "ui_url": "http://127.0.0.71:17078/proxy/app-20261207050000-0001/"}],
    "completedapps": [{"id": "app-20261207040000-0000", "name": "older", "state": "FINISHED",
                       "duration": 12345}],
}
NODES = [{"node": "cd" * 16, "capable": False, "reason": "no java", "host": "127.0.0.75",
          "ram_mb": 1000, "alive": True}]
JOBS = [{"id": "0123456789ab", "file": "wc.py", "state": "failed", "node": "ab" * 16,
         "app_id": "", "error": "<script>x</script>", "ui_url": ""},
        {"id": "ba9876543210", "file": "wc.py", "state": "running", "node": "ab" * 16,
         "app_id": "app-20261207050000-0001", "error": "",
         "ui_url": "http://127.0.0.71:17078/proxy/app-20261207050000-0001/"}]


def test_fragment_shows_master_workers_apps_jobs_and_links():
    use_templates(TEMPLATES)
    html = render_text("_spark.html", spark={"cluster": CLUSTER, "nodes": NODES},
                       view=VIEW, jobs=JOBS)
    assert "spark://127.0.0.71:17077" in html and 'href="http://127.0.0.71:17078/"' in html
    assert "127.0.0.72:4242" in html
    # the worker's and the running application's UIs through the ingress (master proxy)
    assert 'href="http://127.0.0.71:17078/proxy/worker-20261207050000-h-4242/"' in html
    assert html.count('href="http://127.0.0.71:17078/proxy/app-20261207050000-0001/"') == 2
    assert 'href="http://127.0.0.72:4243"' not in html
    assert "app-20261207050000-0001" in html and "app-20261207040000-0000" in html
    assert "0123456789ab" in html and "no java" in html
    assert "<script>x" not in html  # escaped


def test_fragment_without_a_cluster_says_how_to_start_one():
    use_templates(TEMPLATES)
    html = render_text("_spark.html", spark={"cluster": None, "nodes": []}, view={},
                       jobs=[])
    assert "meshcloud spark up" in html and "No job yet" in html
