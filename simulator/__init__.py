"""A local stand-in for Azure Communication Services that speaks ACS's real wire formats.

Public entry points are re-exported here; each lives in the module named for its concept.
"""

from simulator.jwt_issuer import TokenFault
from simulator.report import CallReport
from simulator.scenario import Scenario, ScenarioReport, run_scenario
from simulator.script import CallbackKnobs, CallerScript, CallFaults, ScriptLine
from simulator.service import AcsStandIn

__all__ = [
    "AcsStandIn",
    "CallFaults",
    "CallReport",
    "CallbackKnobs",
    "CallerScript",
    "Scenario",
    "ScenarioReport",
    "ScriptLine",
    "TokenFault",
    "run_scenario",
]
