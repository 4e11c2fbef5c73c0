"""`push_to_hub`: save an object's files into a fresh folder and upload them as one commit (huggingface_hub).

The one implementation behind `model.push_to_hub`, `config.push_to_hub` and the others, with transformers'
arguments. Without network (or with HF_HUB_OFFLINE=1) it fails at once with one line, before saving anything.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ..errors import CheckpointError, OfflineError
from .hub import hub_reachable


class PushToHubMixin:
    """Adds `push_to_hub` to a class with `save_pretrained(directory)` (models: also `max_shard_size`)."""

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ) -> Any:
        """Upload the files `save_pretrained` writes to the hub repository `repo_id` (created if needed, public
        unless `private`), as one commit on `revision` (or a pull request with `create_pr=True`). Returns
        huggingface_hub's `CommitInfo`. `max_shard_size` applies to models only; `tags` go to the model card.
        """
        from huggingface_hub import HfApi, ModelCard, ModelCardData
        from huggingface_hub.errors import HfHubHTTPError

        if not hub_reachable():
            raise OfflineError(
                f"push_to_hub('{repo_id}') needs the Hugging Face hub, which cannot be reached from here "
                "(offline or HF_HUB_OFFLINE=1); save_pretrained() to a folder and upload it later with `hf upload`"
            )
        api = HfApi(token=token, library_name="siglip")
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            with tempfile.TemporaryDirectory() as folder:
                if hasattr(self, "state_dict"):  # a model
                    self.save_pretrained(folder, max_shard_size=max_shard_size or "50GB")
                else:
                    self.save_pretrained(folder)
                if tags:
                    ModelCard.from_template(ModelCardData(tags=list(tags), library_name="siglip")).save(
                        os.path.join(folder, "README.md")
                    )
                return api.upload_folder(
                    repo_id=repo_id,
                    folder_path=folder,
                    commit_message=commit_message or f"Upload {type(self).__name__}",
                    commit_description=commit_description,
                    revision=revision,
                    create_pr=create_pr,
                )
        except HfHubHTTPError as err:
            reason = str(err).splitlines()[0]
            raise CheckpointError(f"push_to_hub('{repo_id}') was refused by the hub: {reason}") from err
