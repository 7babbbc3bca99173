"""Lexicon statements: short templated sentences that state an emotion in plain words, for scorer training.

Why: GoEmotions is Reddit talk and SEV's replies are one model's style; neither has many sentences of the
plainest kind ("She was livid when the bus never came."), and a classifier trained on them learns to read
the *event* (a cancelled flight sounds sad) instead of the *emotion words*. These sentences pair each
emotion's vocabulary with events of every valence, taken from the SEV train split's own skeletons, so the
emotion, not the event, decides the label: SEV's own premise. They are generated, not written per item:
the word lists and frames below are the whole source (written for this module), deterministic for a seed.
They never draw on the dev or test skeletons, nor on the plain-statement sets that measure scorers.
"""

from __future__ import annotations

import random

from ..prompts import EMOTIONS

# Words and phrases that name or plainly show each emotion, as they fit "<subject> <be> ___".
STATES: dict[str, tuple[str, ...]] = {
    "anger": (
        "angry",
        "furious",
        "livid",
        "fuming",
        "outraged",
        "irritated",
        "annoyed",
        "fed up",
        "enraged",
        "mad",
        "seething",
        "infuriated",
        "incensed",
        "up in arms",
        "cross",
        "sick and tired of it",
    ),
    "sadness": (
        "sad",
        "heartbroken",
        "devastated",
        "miserable",
        "down",
        "gloomy",
        "depressed",
        "crushed",
        "in tears",
        "grieving",
        "unhappy",
        "sorrowful",
        "downcast",
        "blue",
        "despondent",
        "disheartened",
    ),
    "happiness": (
        "happy",
        "delighted",
        "thrilled",
        "overjoyed",
        "glad",
        "cheerful",
        "elated",
        "joyful",
        "pleased",
        "ecstatic",
        "on cloud nine",
        "beaming",
        "content",
        "grinning from ear to ear",
        "jubilant",
        "over the moon",
    ),
    "fear": (
        "scared",
        "afraid",
        "terrified",
        "frightened",
        "anxious",
        "nervous",
        "worried sick",
        "panicking",
        "petrified",
        "uneasy",
        "dreading what comes next",
        "shaking with fear",
        "fearful",
        "alarmed",
        "on edge",
        "filled with dread",
    ),
    "surprise": (
        "surprised",
        "astonished",
        "stunned",
        "amazed",
        "shocked",
        "speechless",
        "taken aback",
        "caught off guard",
        "flabbergasted",
        "startled",
        "dumbfounded",
        "in disbelief",
        "astounded",
        "staggered",
        "blindsided",
        "gobsmacked",
    ),
    "disgust": (
        "disgusted",
        "revolted",
        "repulsed",
        "sickened",
        "grossed out",
        "nauseated",
        "appalled",
        "repelled",
        "queasy with disgust",
        "horrified by the filth",
        "put off",
        "disgusted to the core",
        "ready to gag",
        "utterly repulsed",
        "nauseous",
        "revolted to the stomach",
    ),
}

# Exclamations and reactions that show the emotion without a "be" phrase.
REACTIONS: dict[str, tuple[str, ...]] = {
    "anger": ("This is outrageous!", "How dare they!", "I've had it with this!", "Unbelievable, I'm so mad!"),
    "sadness": ("My heart is breaking.", "I can't stop crying.", "It hurts so much.", "I feel so empty."),
    "happiness": ("This is wonderful!", "Best day ever!", "I couldn't be happier!", "What a joy!"),
    "fear": ("What if something goes wrong?", "I'm shaking.", "Please let it be okay.", "I'm so scared."),
    "surprise": ("Wait, what?", "I can't believe it!", "No way!", "I never saw that coming!"),
    "disgust": ("Ew, that's gross.", "That makes me sick.", "Yuck!", "How revolting."),
}

# Things people do when they feel it, as they fit "<subject> <past tense> ___" (behaviour, no emotion word).
ACTIONS: dict[str, tuple[str, ...]] = {
    "anger": (
        "slammed the door",
        "shouted at the manager",
        "banged a fist on the desk",
        "snapped at everyone",
        "stormed out of the room",
        "yelled down the phone",
        "glared and clenched a jaw",
        "cursed out loud",
    ),
    "sadness": (
        "cried quietly all evening",
        "stared at the old photos in tears",
        "could not stop sobbing",
        "sat alone in silence, eyes wet",
        "hung their head and wept",
        "lost all appetite for days",
    ),
    "happiness": (
        "laughed and hugged everyone",
        "danced around the kitchen",
        "cheered and jumped for joy",
        "could not stop smiling",
        "was walking on air all day",
        "grinned and punched the air",
    ),
    "fear": (
        "trembled and held their breath",
        "felt their heart pounding",
        "locked every door twice",
        "froze at the sound",
        "lay awake shaking all night",
        "broke into a cold sweat",
    ),
    "surprise": (
        "gasped and did a double take",
        "stopped dead, mouth open",
        "blinked in disbelief",
        "nearly dropped the phone",
        "stared, speechless",
        "jumped back, startled",
    ),
    "disgust": (
        "gagged and turned away",
        "wrinkled their nose and spat it out",
        "pushed the plate away, nauseated",
        "shuddered at the slime",
        "covered their mouth and retched",
        "recoiled from the stench",
    ),
}

# Courtesies that open an assistant's reply: politeness is not an emotion, so these lead `none` sentences.
COURTESIES = (
    "Thank you for your message.",
    "Certainly.",
    "Sure, here is what you need.",
    "I can help with that.",
    "Thanks for asking.",
    "Of course.",
    "Happy to help with this.",
    "Good question.",
    "Please note the following.",
)

SUBJECTS = (
    ("I", "am", "was"),
    ("I", "feel", "felt"),
    ("She", "is", "was"),
    ("He", "is", "was"),
    ("They", "are", "were"),
    ("My neighbour", "is", "was"),
    ("Everyone in the office", "is", "was"),
    ("You", "must be", "must have been"),
)


def _lower_first(text: str) -> str:
    text = text.strip().rstrip(".!")
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text.startswith("I ") else text


def generate(events: list[str], per_emotion: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`per_emotion` sentences for each of the six emotions, each pairing an emotion state or reaction with an
    event drawn from `events` (any valence); returns (texts, labels)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for emotion in EMOTIONS:
        made: set[str] = set()
        for _ in range(per_emotion * 20):
            if len(made) >= per_emotion:
                break
            subject, present, past = rng.choice(SUBJECTS)
            state = rng.choice(STATES[emotion])
            event = _lower_first(rng.choice(events))
            opening = event[:1].upper() + event[1:]  # the event as the start of a sentence
            who = subject if subject == "I" else subject.lower()
            frame = rng.randrange(6)
            if frame == 0:
                text = f"{subject} {present} {state}."
            elif frame == 1:
                text = f"{subject} {past} {state} when {event}."
            elif frame == 2:
                text = f"{opening}, and {who} {present} {state}."
            elif frame == 3:
                text = f"{rng.choice(REACTIONS[emotion])} {subject} {present} {state}."
            elif frame == 4:
                text = f"{opening}. {rng.choice(REACTIONS[emotion])}"
            else:
                text = f"{opening}, so {who} {rng.choice(ACTIONS[emotion])}."
            made.add(text)
        texts += sorted(made)
        labels += [emotion] * len(made)
    return texts, labels


def courteous_none(facts: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` emotionless sentences that open with a courtesy: a polite but informative reply carries no emotion."""
    rng = random.Random(seed)
    made: set[str] = set()
    for _ in range(n * 20):
        if len(made) >= n:
            break
        made.add(f"{rng.choice(COURTESIES)} {rng.choice(facts).strip()}")
    return sorted(made)
