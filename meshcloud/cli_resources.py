"""Resource verbs of the CLI: importing a package's CLI module registers its verbs
(``meshcloud.cli.EXTENSIONS`` and ``COMMANDS``). One line per package."""

import apps.workloads.cli  # noqa: F401  run, deploy, ps, logs, rm, scale, drain, images
from apps.workloads import policy_cli  # noqa: F401  policy allow-root, revoke-root, list
