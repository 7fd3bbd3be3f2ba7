"""A lesson on distribution shift: one model on the split carved from its own training
folder and on films from elsewhere, with the user's own runs and the app's own charts."""

from __future__ import annotations

import numpy as np
import streamlit as st

from cxr_core.analysis import comparison, plots
from cxr_core.predict.evalsets import EvalSet
from cxr_core.scoring.metrics import choose_threshold, full_report
from cxr_core.store.runs import Run
from pages import ensure_app_shell, kept, store, user_errors
from pages.common import runview
from pages.views import mistakes

ensure_app_shell()


def _both_classes(evalset: EvalSet) -> bool:
    return len(np.unique(evalset.labels)) == 2


def _no_outside_set(run: Run) -> None:
    st.info(
        f"**{run.id}** has been scored only on images from its own training folder. To see "
        "the shift, score it on labelled films from elsewhere, such as the official test/ "
        "folder of Kaggle's chest-xray-pneumonia (624 films), and keep the result:\n\n"
        f"```\npython -m cxr_core evaluate --run {run.id} --data /path/to/chest_xray "
        "--split test --save\n```\n\n"
        "(any folder holding NORMAL/ and PNEUMONIA/ works too), or score it from the "
        "Compare page. Then come back here.",
        icon=":material/school:",
    )


def _lesson(run: Run, inside: EvalSet, outside: EvalSet) -> None:
    a, b = inside.metrics(), outside.metrics()
    st.subheader("1. The same model, two sets of films")
    st.markdown(
        f"**{inside.name}** was carved from the same folder as the training films: the same "
        f"hospital, machines and years. **{outside.name}** was not. Specificity goes from "
        f"**{a['specificity']:.0%}** to **{b['specificity']:.0%}**: of every 100 normal "
        f"films, {100 * (1 - b['specificity']):.0f} are now called pneumonia instead of "
        f"{100 * (1 - a['specificity']):.0f}. Sensitivity goes from {a['sensitivity']:.0%} to "
        f"{b['sensitivity']:.0%}."
    )
    st.dataframe(
        comparison.shift_table(comparison.shift_frame(inside, outside)),
        hide_index=True,
        width="stretch",
    )
    st.caption("95% intervals from 1000 bootstrap resamples of patients.")

    st.subheader("2. The ranking survives; the threshold does not")
    if _both_classes(outside):
        reports = {
            f"{name} ({s.n} films)": full_report(s.labels, s.probs, s.threshold)
            for name, s in (("internal", inside), ("outside", outside))
        }
        left, right = st.columns(2)
        left.plotly_chart(plots.roc_curves(reports, reference=False), key="lesson_roc")
        left.caption("Circles: the run's threshold on each set.")
    else:
        right = st.container()
    normals = {
        name: (s.labels, s.probs) for name, s in (("internal", inside), ("outside", outside))
    }
    right.plotly_chart(plots.normal_scores(normals, outside.threshold), key="lesson_normal_scores")
    medians = [float(np.median(s.probs[s.labels == 0])) for s in (inside, outside)]
    text = (
        f"AUC goes from {a['roc_auc']:.3f} to {b['roc_auc']:.3f}: the model still ranks most "
        "pneumonia films above most normal ones. But the normal films' scores have moved "
        f"(median {medians[0]:.3f} inside, {medians[1]:.3f} outside), and the threshold was "
        "chosen on validation films, a sample of the training folder. Brighter or darker "
        "exposures, other machines, other ages or another hospital's way of framing move the "
        "scores, and a fixed line now cuts into the normal films."
    )
    if _both_classes(outside):
        moved = choose_threshold(
            outside.labels, outside.probs, "specificity", target_specificity=a["specificity"]
        )
        sens = outside.metrics(moved)["sensitivity"]
        text += (
            f" On the outside films, {a['specificity']:.0%} specificity would need a threshold "
            f"of {moved:.3f} instead of {outside.threshold:.3f}, at {sens:.0%} sensitivity. "
            "Read that as insight, never as a result: a threshold chosen on the films you "
            "report on makes those numbers look better than they are."
        )
    st.markdown(text)

    st.subheader("3. The normal films it now calls pneumonia")
    st.markdown(
        "The false alarms on the outside films, most confident first (click another cell of "
        "the matrix for the rest). Switch on a film's CAM: does the map sit on the lungs, or "
        "on borders, text markers, the abdomen: things that differ between hospitals?"
    )
    mistakes.confusion_gallery(run, outside, key=f"lesson_{run.id}_{outside.key}")

    st.subheader("4. What to do about it")
    st.markdown(
        """
- **Report the outside numbers**, with their intervals: the internal split tells you
  how well the model learnt its folder, not how it will do elsewhere.
- **Choose the threshold again on the new site's films**: a labelled validation sample
  from there (never the test films you report), or recalibrate on it (temperature
  scaling) and then choose.
- **Train on more varied films**: several hospitals and machines, augmentation of
  contrast, exposure and framing, so that less of what changes between sites is learnt.
- **Check the CAMs for shortcuts**: borders, markers and the abdomen differ by site.
- **Keep watching after deployment**: a change in the share of films called pneumonia is
  often the first sign that the films have changed.
"""
    )
    _adapting(run, outside)


def _adapting(run: Run, outside: EvalSet) -> None:
    st.subheader("5. Adapting to the site without its labels")
    st.markdown(
        f"""
With films from the new site but no labels, two levers remain. See first how the site
differs (`python -m cxr_core shift --run {run.id} --data DIR`), then adapt
(`adapt --run {run.id} --data DIR --method bn|prior|both`): a new run, beside the old one.

- **Re-estimated BatchNorm statistics (AdaBN)** help when the films *look* different
  (exposure, contrast, another machine) and the network's layers receive inputs on another
  scale than in training. They hurt when the site's films are few (noisy estimates), when
  they are not one population (a mix of machines), or when the difference is what the
  model should see (a sicker population shifts the statistics too, and AdaBN normalises
  part of the disease away). Refused for a frozen ImageNet backbone, whose head was
  trained on ImageNet's statistics.
- **A threshold moved by the site's prevalence (EM)** helps when only the mix of cases
  differs (a clinic with fewer pneumonias) and the probabilities are calibrated. It hurts
  when the films themselves changed: the scores of normal films rise, EM reads that as
  more pneumonia, and the threshold moves the wrong way.

An adapted run's figures on the films it was adapted on are **adapted on these films
without their labels**: never read them as the inductive figures of the table above.
Whether adaptation helped is only known on labelled films of the site: score both runs on
them and compare with the paired tests (here: {outside.name}).
"""
    )


st.title("A lesson on distribution shift")
st.caption(
    "Why a model that does well on the test split carved from its own training folder can "
    "raise many false alarms on another hospital's films: shown with your runs."
)
with user_errors():
    runs = runview.evaluated_runs(store())
    if not runs:
        st.info(
            "No evaluated run yet: train one on the Train page, or ship runs in checkpoints/.",
            icon=":material/info:",
        )
        st.stop()
    by_id = {r.id: r for r in runs}
    with_outside = [r.id for r in runs if comparison.outside_sets(r)]
    default = (with_outside or list(by_id))[0]
    if st.session_state.get(kept("lesson_run", default)) not in by_id:
        st.session_state["lesson_run"] = default
    run = by_id[
        st.selectbox(
            "Run",
            list(by_id),
            format_func=lambda i: (
                runview.run_label(by_id[i]) + (" · has an outside set" if i in with_outside else "")
            ),
            key="lesson_run",
        )
    ]
    inside, outside = comparison.internal_set(run), comparison.outside_sets(run)
    if runview.is_synthetic_run(run):
        st.warning(
            "A run trained on **synthetic** images: the lesson's mechanics hold, its numbers "
            "say nothing about radiographs.",
            icon=":material/science:",
        )
    if not outside:
        _no_outside_set(run)
        st.stop()
    if inside is None:
        st.info(f"{run.id} has no internal split to compare with.", icon=":material/info:")
        st.stop()
    names = {s.key: s.name for s in outside}
    chosen = st.selectbox("Outside set", list(names), format_func=names.get, key="lesson_outside")
    _lesson(run, inside, next(s for s in outside if s.key == chosen))
