"""`Quality` make function, in Python: labels each recording by its firing rate.

    demo.Recording(-> Session; duration float64, spike_count int64)      [imported]
    demo.Quality(-> Recording; rate float64, label varchar(16))           [computed]

Built by ../../build.sh with componentize-py, with wasm-make/python (the `datajoint_make` helper)
on the Python path.
"""

import datajoint_make as dj

#: Recordings at or above this rate (spikes per second) are labelled "good".
GOOD_RATE = 5.0


def make(key: dict) -> None:
    # Restricted by the key: exactly the recording being made.
    recording = dj.fetch1("Recording", attributes=["duration", "spike_count"])
    if recording["duration"] <= 0:
        raise ValueError(f"recording {key} has duration {recording['duration']}")
    rate = recording["spike_count"] / recording["duration"]
    label = "good" if rate >= GOOD_RATE else "poor"
    dj.insert1("Quality", {**key, "rate": rate, "label": label})


# componentize-py exports the class named `WitWorld` of the app module.
WitWorld = dj.make_world(make)
