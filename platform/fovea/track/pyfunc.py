"""The MLflow model fovea registers: a raw-input ``python_function`` flavor beside the ``pytorch`` one.

``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` (and ``mlflow models serve``) takes what people have (encoded
image or video bytes, base64 strings in JSON, file paths, uint8 pixel arrays) and answers each input's top-k class
names with probabilities: the model code is ``fovea/track/pyfunc_code.py`` (MLflow's models-from-code: no pickled
Python object), which decodes through ``fovea.predict`` with the model's own recorded settings and loads the
pickle-free copy (``extra_files/weights.pt`` + ``fovea_model.json``, read with ``torch.load(weights_only=True)``).
The loading process needs the ``fovea`` package installed (it is not copied into the model); it does not need to
import it first.

``mlflow.pytorch.load_model`` still gives the ``nn.Module`` (the ``pytorch`` flavor, pickled, for MLflow's own tools;
fovea never reads it). The signature is the pyfunc's: optional columns ``image`` (or ``video``) and ``path``, params
``top_k``, ``logits``, ``views``; the input example is a real image or clip (a rendered demo sample unless the caller
gives one from the dataset).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
ARTIFACT = "fovea_model"  # the pyfunc's artifact key: the pickle-free copy's folder
PARAM_DEFAULTS: dict[str, Any] = {"top_k": 5, "logits": False, "views": "default"}


def input_column(video: bool) -> str:
    """The signature's column of encoded inputs: ``video`` for clip models, else ``image``."""
    return "video" if video else "image"


def raw_signature(video: bool) -> Any:
    """The pyfunc's signature: inputs ``image``/``video`` (binary; base64 in JSON) and ``path`` (string), both
    optional (a row uses one); outputs ``label``, ``probability``, ``classes``, ``probabilities``, ``error`` (and
    ``logits`` with ``params={"logits": true}``); params ``top_k``, ``logits``, ``views``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec("binary", input_column(video), required=False), ColSpec("string", "path", required=False)])
    outputs = Schema(
        [
            ColSpec("string", "label"),
            ColSpec("double", "probability"),
            ColSpec(Array("string"), "classes"),
            ColSpec(Array("double"), "probabilities"),
            ColSpec("string", "error"),
            ColSpec(Array("double"), "logits", required=False),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec("top_k", "long", PARAM_DEFAULTS["top_k"]),
            ParamSpec("logits", "boolean", PARAM_DEFAULTS["logits"]),
            ParamSpec("views", "string", PARAM_DEFAULTS["views"]),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def demo_example(info: dict[str, Any], video: bool) -> bytes:
    """A real input example when the caller has none: a rendered demo image (JPEG) or clip (MP4) at the model's
    resolution (clips: twice its ``num_frames``)."""
    import numpy as np

    rng = np.random.default_rng(0)
    size = max(32, int(info.get("img_size") or 64))
    if video:
        from fovea.data.demo_video import DEMO_ACTIONS, render_demo_video, write_mp4

        frames = render_demo_video(DEMO_ACTIONS[0], rng, size=size, num_frames=2 * int(info.get("num_frames") or 8))
        with tempfile.TemporaryDirectory(prefix="fovea-example-") as tmp:
            path = Path(tmp) / "example.mp4"
            write_mp4(path, frames)
            return path.read_bytes()
    from PIL import Image

    from fovea.data.demo import DEMO_CLASSES, render_demo_image

    buffer = io.BytesIO()
    Image.fromarray(render_demo_image(DEMO_CLASSES[0], rng, size=size)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def save_model(
    path: str,
    mlflow_model: Any,
    *,
    torch_model: Any,
    plain_dir: str,
    signature: Any,
    input_example: Any,
    pip_requirements: list[str],
    metadata: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """The "flavor" ``mlflow.models.Model.log`` saves with: the raw-input pyfunc (models-from-code, its artifact the
    pickle-free copy, kept at ``extra_files/``) and the ``pytorch`` flavor of ``torch_model``, in one MLmodel."""
    import mlflow.pyfunc
    import mlflow.pytorch
    from mlflow.models import Model

    mlflow.pyfunc.save_model(
        path,
        python_model=str(CODE_FILE),
        artifacts={ARTIFACT: plain_dir},
        mlflow_model=mlflow_model,
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements,
        metadata=metadata,
    )
    # one copy of the weights: the pyfunc's artifact is the folder fovea itself downloads (extra_files/)
    artifact = mlflow_model.flavors["python_function"]["artifacts"][ARTIFACT]
    plain = Path(path) / "extra_files"
    shutil.move(str(Path(path) / artifact["path"]), str(plain))
    artifact["path"] = "extra_files"
    leftover = Path(path) / "artifacts"
    if leftover.is_dir() and not any(leftover.iterdir()):
        leftover.rmdir()
    with tempfile.TemporaryDirectory(prefix="fovea-torch-") as tmp:
        torch_dir = Path(tmp) / "pt"
        # MLflow 3 defaults to torch.export ("pt2"), which fixes the batch size and makes load_model return a
        # graph; pickle keeps the nn.Module people fine-tune
        mlflow.pytorch.save_model(
            torch_model, str(torch_dir), serialization_format="pickle", pip_requirements=pip_requirements
        )
        flavor = Model.load(str(torch_dir / "MLmodel")).flavors["pytorch"]
        shutil.move(str(torch_dir / flavor.get("model_data", "data")), str(Path(path) / "data"))
    flavor["extra_files"] = [{"path": f"extra_files/{name}"} for name in sorted(os.listdir(plain))]
    mlflow_model.flavors["pytorch"] = flavor
    mlflow_model.save(os.path.join(path, "MLmodel"))


def log_classifier(
    torch_model: Any,
    *,
    plain_dir: Path,
    info: dict[str, Any],
    video: bool,
    raw_example: bytes | None,
    pip_requirements: list[str],
    metadata: dict[str, Any],
    registered_model_name: str | None,
) -> Any:
    """Log (and register) the model under the active run as ``model``: see the module's docstring.

    Returns:
        MLflow's ``ModelInfo``.
    """
    import sys

    import pandas as pd
    from mlflow.models import Model

    example = raw_example if raw_example else demo_example(info, video)
    return Model.log(
        artifact_path=None,
        name="model",
        flavor=sys.modules[__name__],
        flavor_name="fovea",
        registered_model_name=registered_model_name,
        await_registration_for=60,
        metadata=metadata,
        # the example is served once at logging otherwise: a model load and a decode per registered version
        validate_serving_input=False,
        torch_model=torch_model,
        plain_dir=str(plain_dir),
        signature=raw_signature(video),
        input_example=pd.DataFrame({input_column(video): [example]}),
        pip_requirements=pip_requirements,
    )
