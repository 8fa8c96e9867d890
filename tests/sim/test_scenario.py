"""Scenario files: built-ins load; every mistake is one clear message naming the line."""

from __future__ import annotations

import pytest

from sim.scenario import ScenarioError, builtin_names, load, parse


def test_every_builtin_loads():
    names = builtin_names()
    assert {"steady", "churn", "crash", "partition", "lossy", "mass-join", "phones"} <= set(names)
    for name in names:
        scenario = load(name)
        assert scenario.scenario.name == name
        assert scenario.scenario.duration > 0


@pytest.mark.parametrize("text, message", [
    ('[scenario]\nnodes = 10\ndurtion = "5m"\n',
     "x.toml:3: unknown key 'durtion' in [scenario] (did you mean 'duration'?)"),
    ("[network]\nlatency_ms = 2\nloss = 1.5\n", "x.toml:3: loss must be in [0, 1), got 1.5"),
    ('[[faults]]\nat = "1m"\naction = "crush"\n', "x.toml:3: unknown action 'crush'"),
    ('[scenario]\nduration = "1m"\n[[faults]]\nat = "1m"\naction = "heal"\n'
     '[[faults]]\nat = "2m"\naction = "heal"\n', "x.toml:7: fault at 120s is after the end"),
    ("[netwrok]\nloss = 0.1\n", "x.toml:1: unknown table [netwrok] (did you mean 'network'?)"),
    ('[scenario]\nnodes = "many"\n', "x.toml:2: nodes: 'many' is not a valid int"),
    ('[scenario]\nduration = "soon"\n', "x.toml:2: duration: 'soon' is not a duration"),
    ("[scenario]\nnodes = 0\n", "x.toml:2: nodes must be between 1 and 100000"),
    ("[scenario\nnodes = 3\n", "x.toml: Expected ']'"),
])
def test_mistakes_name_the_line(text, message):
    with pytest.raises(ScenarioError) as info:
        parse(text, "x.toml")
    assert message in str(info.value)


def test_unknown_builtin_suggests_one():
    with pytest.raises(ScenarioError, match="did you mean 'churn'"):
        load("chrun")


def test_durations_and_faults_are_parsed():
    scenario = parse('[scenario]\nduration = "10m"\n[[faults]]\nat = "90s"\naction = "crash"\n'
                     "fraction = 0.3\n", "x.toml")
    assert scenario.scenario.duration == 600.0
    assert scenario.faults[0].at == 90.0 and scenario.faults[0].fraction == 0.3
