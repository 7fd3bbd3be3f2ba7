"""Can the runs' CAMs be trusted? Per run, on a sample of the evaluation set they share:
where the CAM energy sits (border, outside the lung fields, below the diaphragm), ROAD
faithfulness against a random map, the shortcut flags, and on synthetic sets the overlap
with the known opacities. Kept beside each run once computed (cxr_core.analysis.cam_report), so
the page only reads them; missing ones are computed on request, since ROAD is slow."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from cxr_core.analysis import cam_report
from cxr_core.analysis.cam_report import CamReport
from cxr_core.errors import UserError
from cxr_core.predict.ensembles import is_ensemble
from cxr_core.predict.evalsets import EvalSet
from cxr_core.predict.inference import CAM_METHODS
from cxr_core.store.runs import Run
from pages import loaded_model
from pages.common import texts

SAMPLES = [8, 16, 32]
"""Sample sizes offered: 16 is the CLI's default, about a minute per run at 224 px."""


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _share(value: float | None) -> float:
    """A share for the table: an empty cell where it is not defined (every map empty)."""
    return math.nan if value is None else value


def _row(run_id: str, report: CamReport) -> dict:
    check = report.check
    row = {
        "run": run_id,
        "images": check.images,
        "empty maps": check.flat_maps,
        "border": _share(check.shares.border),
        "outside lungs": _share(check.shares.outside_lungs),
        "below diaphragm": _share(check.shares.below_diaphragm),
        "ROAD CAM": check.road.combined if check.road else math.nan,
        "ROAD random": check.road_random.combined if check.road_random else math.nan,
        "beats random": report.faithful,
        "flags": len(check.flags),
    }
    if report.opacity is not None:
        row |= {
            "in opacity": _share(report.opacity.opacity_share),
            "opacity area": report.opacity.opacity_area,
            "pointing hits": report.opacity.hit_rate,
        }
    return row


COLUMNS = {
    "empty maps": st.column_config.NumberColumn(
        help="Maps with no evidence for the explained class (all zero): left out of the shares"
    ),
    "border": st.column_config.NumberColumn(
        format="percent", help="Share of CAM energy in the outer 10% of each side"
    ),
    "outside lungs": st.column_config.NumberColumn(
        format="percent",
        help=f"Share of CAM energy outside the usual lung fields. {texts.LUNG_FIELDS_HELP}",
    ),
    "below diaphragm": st.column_config.NumberColumn(
        format="percent", help="Share of CAM energy below the usual lowest lung point"
    ),
    "ROAD CAM": st.column_config.NumberColumn(
        format="%+.3f",
        help="ROAD combined: the change in the explained class's log-odds when the least "
        "relevant pixels are removed, minus when the most relevant are, halved. Higher is "
        "more faithful.",
    ),
    "ROAD random": st.column_config.NumberColumn(
        format="%+.3f", help="The same for a random map of blobs: the baseline to beat"
    ),
    "beats random": st.column_config.CheckboxColumn(),
    "in opacity": st.column_config.NumberColumn(
        format="percent", help="Synthetic films: share of CAM energy inside the true opacity"
    ),
    "opacity area": st.column_config.NumberColumn(
        format="percent", help="Share of the film the opacity covers: a flat map's share"
    ),
    "pointing hits": st.column_config.NumberColumn(
        format="percent", help="Share of pneumonia films whose CAM peak lies on the opacity"
    ),
}


def _compute(
    runs: dict[str, Run], sets: dict[str, EvalSet], method: str, n: int, with_road: bool
) -> None:
    """Check the runs of ``sets`` one by one; a run that cannot be checked says why."""
    for run_id, evalset in sets.items():
        run = runs[run_id]
        with st.spinner(f"{run_id}: {method} and its checks on {n} images ..."):
            try:
                model = loaded_model(str(run.weights), run.weights.stat().st_mtime)
                cam_report.checked(run, evalset, method, n, with_road, model)
            except (UserError, FileNotFoundError) as exc:
                st.error(f"{run_id}: {exc}", icon=":material/error:")


def run_cam_checks(runs: dict[str, Run], sets: dict[str, EvalSet], key: str = "camrep") -> None:
    """A row per run of ``sets`` (run id -> its scores on one shared set) with its kept
    CAM checks, the flags raised as warnings, and a button to compute the missing ones."""
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("CAM method", list(CAM_METHODS), key=f"{key}_method")
    n = c2.selectbox(
        "Images per run",
        SAMPLES,
        index=SAMPLES.index(cam_report.SAMPLE),
        key=f"{key}_n",
        help="A sample of the set, half of each class where it allows: the same images for "
        "every run on this set.",
    )
    with_road = c3.toggle(
        "With ROAD",
        value=True,
        key=f"{key}_road",
        help="Faithfulness: remove the pixels the CAM calls most (then least) relevant and "
        "predict again, against a random map. It dominates the cost.",
    )
    checkable = {i: s for i, s in sets.items() if not is_ensemble(runs[i])}
    if len(checkable) < len(sets):
        st.caption(
            "Ensembles have no CAM of their own: "
            + ", ".join(i for i in sets if i not in checkable)
            + " are left out; check their members."
        )
    table = st.container()
    missing = [
        i
        for i, s in checkable.items()
        if cam_report.saved(runs[i], s.key, method, n, with_road) is None
    ]
    if missing:
        expected = sum(
            cam_report.expected_seconds(n, runs[i].config().get("img_size", 224), with_road)
            for i in missing
        )
        st.caption(
            f"Not checked yet on these images: {', '.join(missing)}. At least "
            f"{_duration(expected)} in all (~4 s per image at 224 px with ROAD on 2 idle "
            "cores; bigger models and a shared CPU take several times longer); kept "
            "afterwards."
        )
        if st.button(f"Check {len(missing)} run(s)", key=f"{key}_compute"):
            _compute(runs, {i: checkable[i] for i in missing}, method, n, with_road)
    reports = {
        i: r
        for i, s in checkable.items()
        if (r := cam_report.saved(runs[i], s.key, method, n, with_road)) is not None
    }
    with table:
        if not reports:
            return
        first = next(iter(reports.values()))
        st.dataframe(
            pd.DataFrame([_row(i, r) for i, r in reports.items()]),
            hide_index=True,
            width="stretch",
            column_config=COLUMNS,
            key=f"{key}_table",
        )
        st.caption(
            f"{method} for each film's predicted class, on {first.check.images} films of "
            f"{first.set_name}. A flat map puts about 36% in the border, 65% outside the lung "
            "fields and 20% below the diaphragm. The lung fields are a fixed prior for a "
            "centred frontal film, not a segmentation: hover for its limits.",
            help=texts.LUNG_FIELDS_HELP,
        )
        for run_id, report in reports.items():
            for flag in report.check.flags:
                st.warning(f"**{run_id}**: {flag}", icon=":material/warning:")
            if report.faithful is False:
                st.warning(
                    f"**{run_id}**: its {method} maps are no more faithful than a random map "
                    "(ROAD): they say little about what the model uses.",
                    icon=":material/warning:",
                )
