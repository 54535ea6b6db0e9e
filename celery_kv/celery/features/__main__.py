"""``python -m celery_kv.celery.features``: print the README's option and setting tables."""

from ..config import readme_tables

for _name, _text in readme_tables().items():
    print(f"<!-- {_name}:start -->\n{_text}\n<!-- {_name}:end -->\n")
