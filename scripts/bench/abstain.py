"""When does a spore say "I don't know"? The cutoff of p2pnode.ranking.abstains,
chosen and measured on the Debian FAQ against questions it cannot answer.

The FAQ's answers are chunked as `spore ingest` chunks them (211 chunks) and
embedded with the real encoder, stored as the daemon stores them (float16);
its 120 questions are split by position: half A (even) chooses the cutoff,
half B (odd) measures it. The off-topic questions are ours (OFF_TOPIC: 60
general-knowledge questions written for this bench, nothing of Debian or
Linux); they take no part in the choice.

A false abstention is an "I don't know" on a question whose top-1 chunk (by
the encoder's cosine, no votes) is from its own section: an answer that was
right and is withheld. The cutoff chosen is the highest, rounded down to
0.01, that withholds at most MAX_FALSE (2 %) of half A's right answers (of
its 30: none). Counting them against all of half A's questions instead (1
of 60 allowed) gave 0.43, which withheld a short note of our own tests
("what pets do people keep?" at 0.428 to "Cats are ... pets"): short notes
sit lower than FAQ chunks. Printed beside the baseline measured in the same
run (no abstention: every question answered), with a sweep of cutoffs and
the calibrated confidence (agents.consensus.PRIOR) of both kinds of question.

    apt-get install debian-faq
    .venv/bin/python scripts/bench/abstain.py [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np
from learning import load_corpus

from agents.consensus import PRIOR
from agents.encoder import MODEL_NAME, load_encoder
from p2pnode import ranking
from p2pnode.regions import question_text

MAX_FALSE = 0.02  # false abstentions allowed, of half A's right answers
SWEEP = (0.15, 0.20, 0.25, 0.27, 0.28, 0.30, 0.35, 0.40, 0.43, 0.45, 0.50)

OFF_TOPIC = (
    "What is the airspeed velocity of an unladen swallow?",
    "Who painted the Mona Lisa?",
    "How many bones are in the adult human body?",
    "What is the capital city of Australia?",
    "When did the Roman Empire fall?",
    "How long should I boil an egg for a soft yolk?",
    "Why is the sky blue?",
    "Who wrote Pride and Prejudice?",
    "What is the tallest mountain in Africa?",
    "How do bees make honey?",
    "What is the boiling point of water at the top of Everest?",
    "Who won the football World Cup in 1998?",
    "How many players are on a rugby union team?",
    "What causes the tides?",
    "How do I make sourdough starter?",
    "What is the largest ocean on Earth?",
    "Which planet has the most moons?",
    "How far is the Moon from the Earth?",
    "What language is spoken in Brazil?",
    "Who discovered penicillin?",
    "How do I remove a red wine stain from a carpet?",
    "What is the population of Tokyo?",
    "How many strings does a violin have?",
    "What is the difference between a crocodile and an alligator?",
    "Why do cats purr?",
    "How often should I water a cactus?",
    "What year did the Berlin Wall come down?",
    "Who was the first person to walk on the Moon?",
    "What is photosynthesis?",
    "How do I tie a bowline knot?",
    "What is the longest river in South America?",
    "How many calories are in a banana?",
    "What does a blue whale eat?",
    "Who composed the Four Seasons?",
    "What is the speed of sound in air?",
    "How do I train a puppy to sit?",
    "What is the national dish of Spain?",
    "Why do leaves change colour in autumn?",
    "How many time zones does Russia have?",
    "What is the chemical symbol for gold?",
    "Who invented the telephone?",
    "How do I change a flat tyre on a bicycle?",
    "What is the best season to visit Japan?",
    "How does a rainbow form?",
    "What is the plot of Hamlet?",
    "How many hearts does an octopus have?",
    "What is the main ingredient of guacamole?",
    "Which country hosted the 2016 Summer Olympics?",
    "How deep is the Mariana Trench?",
    "What is the smallest country in the world?",
    "How do volcanoes erupt?",
    "Who is the author of One Hundred Years of Solitude?",
    "How long does it take to digest a meal?",
    "What is the freezing point of seawater?",
    "How do I knit a scarf for beginners?",
    "What is the rule for offside in football?",
    "Why do we dream when we sleep?",
    "What is the currency of Switzerland?",
    "How many legs does a spider have?",
    "What do pandas eat in the wild?",
)


def choose(top: np.ndarray, right: np.ndarray) -> float:
    """The highest cutoff (rounded down to 0.01) withholding at most
    MAX_FALSE of these questions' right top-1 answers."""
    right_cos = np.sort(top[right])
    allowed = math.floor(MAX_FALSE * len(right_cos))
    if allowed >= len(right_cos):
        return 1.0
    return math.floor(float(right_cos[allowed]) * 100) / 100


def abstained(q: np.ndarray, cv: np.ndarray, below: float) -> bool:
    """The shipped rule (ranking.abstains) on the encoder's top-1, no votes."""
    sims = cv @ q
    best = int(np.argmax(sims))
    cand = ranking.Candidate(b"", float(sims[best]), cv[best], {})
    return ranking.abstains(q, [ranking.Scored(cand, 0, float(sims[best]), False)],
                            ranking.Opinions({}), below)


def measure(qv: np.ndarray, cv: np.ndarray, right: np.ndarray, below: float) -> dict[str, Any]:
    out = np.array([abstained(q, cv, below) for q in qv], bool)
    n = len(qv)
    return {"questions": n, "top1_right": int(right.sum()),
            "abstained": int(out.sum()),
            "false_abstentions": int((out & right).sum()),
            "false_abstention_share": round(float((out & right).sum()) / max(n, 1), 4),
            "withheld_of_right": round(float((out & right).sum()) / max(int(right.sum()), 1), 4),
            "wrong_top1_abstained": int((out & ~right).sum()),
            "answered_right": int((~out & right).sum()),
            "answered_wrong": int((~out & ~right).sum())}


def confidences(sims: np.ndarray) -> np.ndarray:
    """What the calibration prior says of the top-1 (top and runner-up score)."""
    s = -np.sort(-sims, axis=1)
    return np.array([PRIOR(float(a), float(b)) for a, b in s[:, :2]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    c = load_corpus()
    cv = c.cv.astype("<f2").astype(np.float32)  # as the daemon stores them
    qv = np.asarray(c.qv, np.float32)
    ov = np.asarray(load_encoder(threads=2).embed([question_text(q) or q for q in OFF_TOPIC]),
                    np.float32)  # as a spore embeds a question
    sims = qv @ cv.T
    top = sims.max(axis=1)
    right = np.array([c.chunks[int(i)][0] == sec
                      for i, (sec, _) in zip(sims.argmax(axis=1), c.questions, strict=True)])
    half = {"A": np.arange(len(qv)) % 2 == 0, "B": np.arange(len(qv)) % 2 == 1}
    cutoff = choose(top[half["A"]], right[half["A"]])
    shipped = ranking.abstain_below(MODEL_NAME)
    off_top = (ov @ cv.T).max(axis=1)
    report: dict[str, Any] = {
        "encoder": MODEL_NAME, "chunks": len(cv), "faq_questions": len(qv),
        "off_topic_questions": len(ov), "max_false": MAX_FALSE,
        "chosen_on_A": cutoff, "shipped": shipped,
        "baseline": {"faq_top1_right": round(float(right.mean()), 4),
                     "off_topic_answered": 1.0, "abstained": 0},
        "with_cutoff": {h: measure(qv[m], cv, right[m], cutoff) for h, m in half.items()},
        "off_topic_abstained": round(float(np.mean([abstained(q, cv, cutoff) for q in ov])), 4),
        "cosine": {"faq_right_min": round(float(top[right].min()), 4),
                   "faq_top1_p10": round(float(np.percentile(top, 10)), 4),
                   "off_topic_max": round(float(off_top.max()), 4),
                   "off_topic_p90": round(float(np.percentile(off_top, 90)), 4)},
        "confidence": {"faq_right": _spread(confidences(sims)[right]),
                       "faq_wrong": _spread(confidences(sims)[~right]),
                       "off_topic": _spread(confidences(ov @ cv.T))},
        "sweep": [{"cutoff": t,
                   "false_A": measure(qv[half["A"]], cv, right[half["A"]], t)[
                       "false_abstentions"],
                   "false_B": measure(qv[half["B"]], cv, right[half["B"]], t)[
                       "false_abstentions"],
                   "off_topic_abstained": round(float(np.mean(off_top < t)), 4)}
                  for t in SWEEP]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report)


def _spread(x: np.ndarray) -> dict[str, float]:
    return {"min": round(float(x.min()), 3), "median": round(float(np.median(x)), 3),
            "max": round(float(x.max()), 3)}


def show(r: dict[str, Any]) -> None:
    print(f"encoder {r['encoder']}: {r['chunks']} FAQ chunks, {r['faq_questions']} FAQ "
          f"questions (A even / B odd), {r['off_topic_questions']} off-topic questions (ours)")
    print(f"cutoff chosen on half A (false abstentions <= {r['max_false']:.0%} of its "
          f"right answers): {r['chosen_on_A']:.2f}; shipped in p2pnode.ranking: "
          f"{r['shipped']:.2f}" + ("" if r["chosen_on_A"] == r["shipped"] else "   MISMATCH"))
    print()
    print(f"{'':34}{'baseline (no abstention)':>26}{'with the cutoff':>18}")
    for h, m in r["with_cutoff"].items():
        n = m["questions"]
        print(f"FAQ half {h}: false abstentions      {'0':>22}{m['false_abstentions']:>18}"
              f"  ({m['withheld_of_right']:.1%} of {m['top1_right']} right answers, "
              f"{m['false_abstention_share']:.1%} of {n} questions)")
        print(f"  right top-1 answered              {m['top1_right']:>22}"
              f"{m['answered_right']:>18}")
        print(f"  wrong top-1 answered              {n - m['top1_right']:>22}"
              f"{m['answered_wrong']:>18}")
    print(f"off-topic abstained                 {'0 %':>22}"
          f"{r['off_topic_abstained']:>17.0%}")
    cos = r["cosine"]
    print(f"\ntop-1 cosine: FAQ right min {cos['faq_right_min']:.3f}, FAQ p10 "
          f"{cos['faq_top1_p10']:.3f}; off-topic p90 {cos['off_topic_p90']:.3f}, max "
          f"{cos['off_topic_max']:.3f}")
    print("calibrated confidence (prior) min/median/max: " + "; ".join(
        f"{k} {v['min']:.2f}/{v['median']:.2f}/{v['max']:.2f}"
        for k, v in r["confidence"].items()))
    print("\nsweep: cutoff  false A  false B  off-topic abstained")
    for s in r["sweep"]:
        print(f"       {s['cutoff']:.2f}  {s['false_A']:7d}  {s['false_B']:7d}  "
              f"{s['off_topic_abstained']:>8.0%}")


if __name__ == "__main__":
    main()
