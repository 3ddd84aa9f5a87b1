"""Where the project lives. The one place to change when the repository moves.

`tools/sync_headers.py` writes these into every notebook's Colab badge and install cell, and
`tests/test_notebooks_meta.py` fails when a notebook disagrees with them.
"""

GITHUB_REPO = "vit-from-scratch/vit-from-scratch"
BRANCH = "main"
REPO_URL = f"https://github.com/{GITHUB_REPO}"
PIP_URL = f"git+{REPO_URL}@{BRANCH}"


def colab_url(notebook: str) -> str:
    """Colab address that opens `notebooks/<notebook>` from the repository."""
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{BRANCH}/notebooks/{notebook}"
