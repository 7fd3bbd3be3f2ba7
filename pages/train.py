"""Train: choose architectures and options (or a preset) and launch runs.

Every run is its own OS process (cxr_core.jobs), queued so that one trains at a time by
default; what is shown about it comes from the run store, so a refresh, a closed tab or a
second browser session neither stops nor duplicates it.
"""

from __future__ import annotations

import uuid

import streamlit as st

from cxr_core import config, settings
from cxr_core.errors import UserError
from cxr_core.jobs import launch_training
from cxr_core.models import REGISTRY
from cxr_core.presets import PRESETS, apply_preset
from cxr_core.runs import ACTIVE
from pages import augmentation_controls, data_spec, ensure_app_shell, kept, store, user_errors
from pages.common import forms, runview, texts

ensure_app_shell()

IMG_SIZES = [0, 32, 48, 64, 96, 128, 160, 192, 224, 256, 288, 299, 320, 384, 448, 512]
CUSTOM = "custom"

DEFAULTS = {
    "archs": ["small_cnn"],
    "pretrained": False,
    "unfreeze_last": -1,
    "img_size": 0,
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "imbalance": "weighted",
    "seed": 0,
    "clahe": False,
    "val_fraction": 0.15,
    "test_fraction": 0.15,
    "max_images": 0,
    "patience": 5,
    "monitor": "val_auc",
    "threshold_method": "youden",
    "target_sensitivity": 0.95,
    "label_smoothing": 0.0,
    "device": "auto",
}


def _apply_preset() -> None:
    """Fill the form from the chosen preset (the user can still change anything)."""
    name = st.session_state["opt_preset"]
    if name == CUSTOM:
        return
    values = apply_preset(name, {})
    for key, value in values.items():
        if key == "arch":
            st.session_state["opt_archs"] = [value]
        elif key == "data":
            st.session_state["data_spec"] = value
        elif key == "augment":
            for field, setting in value.items():
                st.session_state[f"aug_{field}"] = setting
        elif key == "img_size":
            st.session_state["opt_img_size"] = value
        elif f"opt_{key}" in st.session_state or key in DEFAULTS:
            st.session_state[f"opt_{key}"] = value


def _opt(name: str) -> str:
    return kept(f"opt_{name}", DEFAULTS[name])


@st.fragment(run_every="3s")
def queue_status() -> None:
    with user_errors():
        runs = store().list()
        known = {r.id for r in runs}
        starting = [i for i in st.session_state.get("launched", []) if i not in known]
        _show_queue([r for r in runs if r.status().get("status") in ACTIVE], starting)


def _show_queue(active: list, starting: list[str]) -> None:
    for run_id in starting:  # launched, its process is still importing
        st.progress(0.0, text=f"{run_id}: starting ...")
    if not active and not starting:
        st.caption("No run is training or queued.")
    for run in active:
        fraction, detail = runview.run_progress(run.status(), run.config().get("epochs"))
        st.progress(fraction, text=f"{run.id}: {detail}")


st.title("Train")
st.caption(
    "Each run trains in its own background process and keeps going if you close the tab. "
    "Several selected architectures are trained with the same options, one after another."
)

with st.container(border=True):
    spec = data_spec()
    left, right = st.columns([3, 1])
    left.markdown(f"**Training data:** `{spec}`")
    if spec.startswith("synthetic"):
        left.badge("synthetic data", icon=":material/science:", color="orange")
    right.page_link("pages/data.py", label="Change on the Data page", icon=":material/edit:")

st.selectbox(
    "Preset",
    [CUSTOM, *PRESETS],
    key=kept("opt_preset", CUSTOM),
    on_change=_apply_preset,
    help="A starting point that fills the options below; anything you change afterwards wins.",
)

archs = st.multiselect(
    "Architectures",
    list(REGISTRY),
    key=_opt("archs"),
    format_func=lambda a: f"{a}: {REGISTRY[a].description}",
    help="One run per architecture, same data, split, seed and budget: a fair comparison.",
)

c1, c2, c3 = st.columns(3)
pretrained = c1.toggle(
    "Start from ImageNet weights (pretrained)",
    key=_opt("pretrained"),
    help=texts.help_text("transfer learning"),
)
unfreeze = c2.number_input(
    "Trainable backbone stages",
    min_value=-1,
    max_value=50,
    key=_opt("unfreeze_last"),
    help="-1: train every layer (fine-tune). 0: freeze the backbone, train the head only. "
    "N: the head plus the last N stages. " + texts.help_text("transfer learning"),
)
img_size = c3.selectbox(
    "Image size (px)",
    IMG_SIZES,
    key=_opt("img_size"),
    format_func=lambda s: "architecture default" if s == 0 else f"{s} px",
    help="Images are resized to a square of this side, exactly as at prediction time.",
)
for arch in archs:
    if forms.needs_download(arch, pretrained):
        st.info(
            f"{arch}: ImageNet weights are downloaded from the internet on first use. "
            "Offline, use efficientnet_lite0 (its weights ship with pip).",
            icon=":material/cloud_download:",
        )

c1, c2, c3, c4 = st.columns(4)
epochs = c1.number_input("Epochs", min_value=1, max_value=500, key=_opt("epochs"))
batch_size = c2.number_input("Batch size", min_value=1, max_value=1024, key=_opt("batch_size"))
lr = c3.number_input(
    "Learning rate",
    min_value=1e-6,
    max_value=1.0,
    step=1e-4,
    format="%.1e",
    key=_opt("lr"),
)
seed = c4.number_input(
    "Seed",
    min_value=0,
    max_value=2**31 - 1,
    key=_opt("seed"),
    help="Fixes the split, the initial weights and the augmentation draws.",
)
c1, c2, c3 = st.columns(3)
optimizer = c1.selectbox("Optimizer", config.OPTIMIZERS, key=_opt("optimizer"))
scheduler = c2.selectbox(
    "Learning-rate schedule",
    config.SCHEDULERS,
    key=_opt("scheduler"),
    help="cosine/onecycle step every batch; step/plateau every epoch.",
)
imbalance = c3.selectbox(
    "Class imbalance",
    config.IMBALANCE,
    key=_opt("imbalance"),
    help="The data hold about 3 pneumonia images per normal one. weighted: the loss weighs "
    "normal images up; sampler: batches are drawn balanced; none: as is.",
)

aug = augmentation_controls()

with st.expander("Advanced"):
    c1, c2, c3 = st.columns(3)
    clahe = c1.checkbox(
        "CLAHE contrast equalisation",
        key=_opt("clahe"),
        help="Applied in preprocessing, so also at prediction time.",
    )
    weight_decay = c1.number_input(
        "Weight decay", min_value=0.0, max_value=1.0, format="%.1e", key=_opt("weight_decay")
    )
    label_smoothing = c1.number_input(
        "Label smoothing", min_value=0.0, max_value=0.4, step=0.05, key=_opt("label_smoothing")
    )
    val_fraction = c2.number_input(
        "Validation fraction",
        min_value=0.05,
        max_value=0.45,
        step=0.05,
        key=_opt("val_fraction"),
        help="Share of training patients held out to pick the best epoch and the threshold.",
    )
    test_fraction = c2.number_input(
        "Internal test fraction",
        min_value=0.0,
        max_value=0.45,
        step=0.05,
        key=_opt("test_fraction"),
        help="Used only when the data have no test/ folder.",
    )
    max_images = c2.number_input(
        "Use at most N training images (0 = all)",
        min_value=0,
        step=100,
        key=_opt("max_images"),
        help="A patient-grouped subset, for quick experiments.",
    )
    patience = c3.number_input(
        "Early-stopping patience (epochs)",
        min_value=1,
        max_value=100,
        key=_opt("patience"),
        help=texts.help_text("overfitting"),
    )
    monitor = c3.selectbox("Best epoch by", config.MONITORS, key=_opt("monitor"))
    threshold_method = c3.selectbox(
        "Threshold",
        config.THRESHOLD_METHODS,
        key=_opt("threshold_method"),
        help=texts.help_text("threshold"),
    )
    target_sensitivity = c3.number_input(
        "Target sensitivity",
        min_value=0.5,
        max_value=0.999,
        step=0.01,
        key=_opt("target_sensitivity"),
        disabled=threshold_method != "sensitivity",
        help=texts.help_text("sensitivity"),
    )
    device = c1.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key=_opt("device"))
    try:
        default_queue = settings.queue_limit()
    except UserError as exc:
        st.error(str(exc))
        default_queue = 1
    queue = c2.number_input(
        "Runs training at once",
        min_value=1,
        max_value=8,
        key=kept("opt_queue", default_queue),
        help="Further runs wait in the queue. Keep 1 on a CPU: parallel runs only share the cores.",
    )

options = {
    "data": spec,
    "pretrained": pretrained,
    "unfreeze_last": int(unfreeze),
    "img_size": int(img_size),
    "epochs": int(epochs),
    "batch_size": int(batch_size),
    "lr": float(lr),
    "weight_decay": float(weight_decay),
    "optimizer": optimizer,
    "scheduler": scheduler,
    "imbalance": imbalance,
    "augment": aug,
    "clahe": clahe,
    "seed": int(seed),
    "val_fraction": float(val_fraction),
    "test_fraction": float(test_fraction),
    "max_images": int(max_images) or None,
    "patience": int(patience),
    "monitor": monitor,
    "threshold_method": threshold_method,
    "target_sensitivity": float(target_sensitivity),
    "label_smoothing": float(label_smoothing),
    "device": device,
}

# The button's key changes after every launch: a second click that arrives from the old
# button (a double click, a slow connection) matches no widget and launches nothing.
nonce = st.session_state.setdefault("launch_nonce", uuid.uuid4().hex)
label = f"Launch {len(archs)} run(s)" if len(archs) > 1 else "Launch run"
if st.button(label, type="primary", icon=":material/rocket_launch:", key=f"launch_{nonce}"):
    st.session_state["launch_nonce"] = uuid.uuid4().hex
    with user_errors():
        configs = forms.build_configs(archs, options)
        runs_dir = store().root
        launched = [launch_training(cfg, runs_dir, queue=int(queue)) for cfg in configs]
        st.session_state["launched"] = launched
if st.session_state.get("launched"):
    st.success(
        "Launched: " + ", ".join(f"`{r}`" for r in st.session_state["launched"]),
        icon=":material/check_circle:",
    )
    st.page_link(
        "pages/runs.py", label="Follow them on the Runs page", icon=":material/monitoring:"
    )

st.subheader("Queue")
queue_status()
