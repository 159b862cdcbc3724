"""The multirotor energy model (companion/routing/energy.py): calibrated against ArduCopter
SITL's reported charge for the default delivery (shared/reference/ardupilot-sitl.md) and
against the built-in vehicle flying the same delivery here; monotone and never negative;
bad inputs refused by name."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.routing.energy import (
    AIRFRAMES,
    QUAD_4S_5000,
    SITL_COPTER,
    Battery,
    EnergyInputError,
    EnergyModel,
    EnvelopeError,
    FlightLeg,
    LegKind,
    Wind,
    airframe,
    delivery_legs,
    hover,
    legs_from_mission,
    power_w,
    takeoff,
    transit,
    wait_until,
)
from firmware_bridge.dialect import mavlink
from sim.vehicle import DEFAULT_HOME
from sim.vehicle.controllers import PositionTarget, Takeoff
from sim.vehicle.copter import Copter
from sim.vehicle.params import ParamTable

# ardupilot-sitl.md, "A reference delivery on SITL": 500 m on bearing 45°, 30 m cruise,
# hand-over at 5 m with a 3 s hold, RTL; BATT_CAPACITY 3300.
SITL_MAH = 1629.0
SITL_MAH_WITH_PARCEL = 1840.0
PARCEL_KG = 1.0
TOLERANCE = 0.10
GUIDED, RTL = 4, 6
GRIPPER = {"GRIP_ENABLE": 1, "GRIP_TYPE": 1, "SERVO8_FUNCTION": 28}


def predicted_mah(parcel_kg: float) -> float:
    plan = EnergyModel(SITL_COPTER).plan(delivery_legs(500.0, parcel_kg=parcel_kg))
    assert plan.can_fly, plan.reason
    return plan.charge_mah


def fly_default_delivery_on_the_built_in_vehicle() -> float:
    """The reference delivery flown by the built-in vehicle's own model (stepped directly, no
    link: as fast as the CPU allows); the charge it counted, mAh."""
    copter = Copter(DEFAULT_HOME, ParamTable(GRIPPER), ready_delay_s=0.0)
    assert copter.set_mode(GUIDED) and copter.arm(force=False)
    assert copter.gripper.load_held
    dt = 0.02

    def run_until(done: object, limit_s: float) -> None:
        end = copter.time + limit_s
        while not done():  # type: ignore[operator]
            copter.step(dt)
            assert copter.time < end, "the vehicle did not get there"

    copter.controller = Takeoff(copter, 30.0)
    run_until(lambda: copter.body.alt >= 29.5, 60)
    north = east = 500.0 * math.cos(math.radians(45))
    copter.controller = PositionTarget(north, east, 30.0)
    run_until(lambda: math.hypot(copter.body.north - north, copter.body.east - east) < 2.0, 90)
    copter.controller = PositionTarget(north, east, 5.0)
    run_until(lambda: copter.body.alt <= 5.5, 60)
    assert copter.gripper_action(mavlink.GRIPPER_ACTION_RELEASE) == mavlink.MAV_RESULT_ACCEPTED
    hold_end = copter.time + 3.0
    run_until(lambda: copter.time >= hold_end, 10)
    assert not copter.gripper.load_held
    copter.controller = PositionTarget(north, east, 30.0)
    run_until(lambda: copter.body.alt >= 29.5, 60)
    assert copter.set_mode(RTL)
    run_until(lambda: not copter.armed, 200)
    assert math.hypot(copter.body.north, copter.body.east) < 2.0
    return copter.battery.consumed_mah


# ---- calibration -------------------------------------------------------------------------
def test_default_delivery_is_within_10_percent_of_sitls_charge() -> None:
    assert predicted_mah(0.0) == pytest.approx(SITL_MAH, rel=TOLERANCE)
    assert predicted_mah(PARCEL_KG) == pytest.approx(SITL_MAH_WITH_PARCEL, rel=TOLERANCE)


def test_default_delivery_is_within_10_percent_of_the_built_in_vehicles_charge() -> None:
    flown = fly_default_delivery_on_the_built_in_vehicle()
    assert predicted_mah(PARCEL_KG) == pytest.approx(flown, rel=TOLERANCE)


def test_hover_climb_descent_and_cruise_currents_match_sitls() -> None:
    # ardupilot-sitl.md: ~30 A hovering and at 10 m/s alike, 33 A climbing at 2.5 m/s,
    # 29 A descending at 1.5 m/s, ~40 A with the 1 kg load; 12.6 V.
    volts = SITL_COPTER.battery.nominal_voltage_v
    assert power_w(SITL_COPTER, 0, 0) / volts == pytest.approx(30.0, rel=0.05)
    assert power_w(SITL_COPTER, 0, 10.0) / volts == pytest.approx(30.0, rel=0.05)
    assert power_w(SITL_COPTER, 1.0, 0) / volts == pytest.approx(40.0, rel=0.05)
    assert power_w(SITL_COPTER, 0, 0, 2.5) / volts == pytest.approx(33.0, rel=0.10)
    assert power_w(SITL_COPTER, 0, 0, -1.5) / volts == pytest.approx(29.0, rel=0.10)


def test_power_curve_is_u_shaped_and_hover_grows_with_mass_to_the_1_5() -> None:
    speeds = [power_w(QUAD_4S_5000, 0, v) for v in (0, 4, 8, 12)]
    assert speeds[0] > speeds[1] > speeds[2]  # induced power falls first
    assert speeds[3] > speeds[2]  # then parasitic power takes over
    frame = SITL_COPTER
    induced = [
        power_w(frame, kg, 0) * frame.powertrain_efficiency - frame.profile_power_w
        for kg in (0.0, 1.0)
    ]
    ratio = ((frame.mass_kg + 1.0) / frame.mass_kg) ** 1.5
    assert induced[1] / induced[0] == pytest.approx(ratio, rel=1e-6)


# ---- legs, wind, margins -----------------------------------------------------------------
def test_leg_times_follow_ardupilots_flight() -> None:
    plan = EnergyModel(SITL_COPTER).plan(delivery_legs(500.0))
    times = {leg.kind: leg.time_s for leg in plan.legs}
    # SITL: cruise 498 m in 53.9 s, descent 30 -> 5 m 17.5 s, climb 12.3 s, land 36.8 s
    assert times[LegKind.TRANSIT] == pytest.approx(53.9, rel=0.05)
    assert times[LegKind.DESCENT] == pytest.approx(17.5, rel=0.10)
    assert times[LegKind.CLIMB] == pytest.approx(12.3, rel=0.10)
    assert times[LegKind.LAND] == pytest.approx(36.8, rel=0.10)
    assert plan.time_s == pytest.approx(205.4, rel=0.05)
    report = plan.report()
    assert report["can_fly"] and [leg["kind"] for leg in report["legs"]] == [
        "takeoff", "transit", "descent", "hover", "climb", "return", "land"
    ]  # fmt: skip
    assert plan.energy_wh == pytest.approx(plan.charge_mah * 12.6 / 1000.0)


def test_headwind_costs_more_than_tailwind_and_unknown_direction_is_the_worst() -> None:
    def cost(wind: Wind, track: float | None) -> float:
        return EnergyModel(SITL_COPTER, wind=wind).leg(transit(1000.0, track_deg=track)).charge_mah

    calm = cost(Wind(), 0.0)
    head = cost(Wind(4.0, from_deg=0.0), 0.0)  # flying north into a north wind
    tail = cost(Wind(4.0, from_deg=180.0), 0.0)
    cross = cost(Wind(4.0, from_deg=90.0), 0.0)
    worst = cost(Wind(4.0), 0.0)
    assert head > calm and head > cross
    assert worst >= max(head, tail, cross)


def test_a_plan_beyond_the_battery_is_refused_with_the_numbers() -> None:
    small = Battery(capacity_mah=1500.0, nominal_voltage_v=12.6)
    plan = EnergyModel(SITL_COPTER).with_battery(small).plan(delivery_legs(500.0))
    assert not plan.can_fly
    assert "mAh" in plan.reason and "20% reserve" in plan.reason
    assert plan.margin_mah < 0


def test_wind_beyond_the_airframe_and_overweight_parcels_are_refused() -> None:
    plan = EnergyModel(SITL_COPTER, wind=Wind(8.0)).plan(delivery_legs(500.0))
    assert not plan.can_fly and "airspeed" in plan.reason and "to the drop" in plan.reason
    plan = EnergyModel(SITL_COPTER).plan(delivery_legs(500.0, parcel_kg=2.0))
    assert not plan.can_fly and "payload 2 kg" in plan.reason


def test_named_airframes() -> None:
    assert set(AIRFRAMES) == {"sitl-copter", "quad-4s-5000"}
    assert airframe("quad-4s-5000").battery.capacity_wh == pytest.approx(74.0)
    with pytest.raises(EnergyInputError, match="unknown airframe 'x'"):
        airframe("x")
    plan = EnergyModel(QUAD_4S_5000).plan(delivery_legs(2000.0, parcel_kg=1.0))
    assert plan.can_fly and 0 < plan.charge_mah < QUAD_4S_5000.battery.budget_mah


# ---- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: transit(-1.0), "distance_m: must not be negative"),
        (lambda: transit(math.nan), "distance_m: must be finite"),
        (lambda: hover(math.inf), "duration_s: must be finite"),
        (lambda: transit(10.0, payload_kg=-0.1), "payload_kg: must not be negative"),
        (lambda: Battery(0.0, 12.6), "battery.capacity_mah: must be positive"),
        (lambda: Battery(3300.0, math.nan), "battery.nominal_voltage_v: must be finite"),
        (lambda: Battery(3300.0, 12.6, reserve_fraction=1.0), "leaves nothing to fly on"),
        (lambda: Wind(-2.0), "wind.speed_mps: must not be negative"),
        (lambda: Wind(2.0, from_deg=math.nan), "wind.from_deg: must be finite"),
        (lambda: FlightLeg(LegKind.HOVER, duration_s="3"), "must be a number"),  # type: ignore[arg-type]
        (lambda: EnergyModel(SITL_COPTER).plan([]), "no legs"),
        (lambda: power_w(SITL_COPTER, 0.0, -1.0), "airspeed_mps: must not be negative"),
    ],
)
def test_bad_inputs_are_named(make: object, message: str) -> None:
    with pytest.raises(EnergyInputError, match=message):
        make()  # type: ignore[operator]


def test_envelope_error_is_an_input_error() -> None:
    with pytest.raises(EnvelopeError):
        EnergyModel(SITL_COPTER, wind=Wind(10.0)).leg(transit(100.0))


# ---- properties --------------------------------------------------------------------------
distances = st.floats(0.0, 5000.0)
payloads = st.floats(0.0, 1.0)
winds = st.floats(0.0, 4.5)
frames = st.sampled_from([SITL_COPTER, QUAD_4S_5000])


@settings(max_examples=40, deadline=None)
@given(frames, distances, distances, payloads, winds)
def test_energy_grows_with_distance(frame, d1, d2, kg, wind) -> None:  # type: ignore[no-untyped-def]
    model = EnergyModel(frame, wind=Wind(wind))
    near, far = sorted((d1, d2))
    a = model.plan(delivery_legs(near, parcel_kg=kg))
    b = model.plan(delivery_legs(far, parcel_kg=kg))
    assert 0 < a.charge_mah <= b.charge_mah and 0 < a.time_s <= b.time_s
    assert all(leg.energy_wh >= 0 and leg.time_s >= 0 for leg in a.legs + b.legs)


@settings(max_examples=40, deadline=None)
@given(frames, distances, payloads, payloads, winds)
def test_energy_grows_with_payload(frame, d, kg1, kg2, wind) -> None:  # type: ignore[no-untyped-def]
    model = EnergyModel(frame, wind=Wind(wind))
    light, heavy = sorted((kg1, kg2))
    a = model.plan(delivery_legs(d, parcel_kg=light)).charge_mah
    b = model.plan(delivery_legs(d, parcel_kg=heavy)).charge_mah
    assert 0 < a <= b * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(frames, distances, payloads, winds, winds, st.one_of(st.none(), st.floats(0, 360)))
def test_worst_case_wind_allowance_grows_with_wind(frame, d, kg, w1, w2, track) -> None:  # type: ignore[no-untyped-def]
    calm, windy = sorted((w1, w2))
    legs = delivery_legs(d, parcel_kg=kg, track_deg=track)
    a = EnergyModel(frame, wind=Wind(calm)).plan(legs).charge_mah
    b = EnergyModel(frame, wind=Wind(windy)).plan(legs).charge_mah
    assert 0 < a <= b * (1 + 1e-9)


@settings(max_examples=60, deadline=None)
@given(
    frames,
    payloads,
    st.floats(0.0, 14.0),
    st.floats(-3.0, 5.0),
)
def test_power_is_positive_and_grows_with_mass(frame, kg, speed, vc) -> None:  # type: ignore[no-untyped-def]
    p = power_w(frame, kg, speed, vc)
    assert p > 0
    heavier = power_w(frame, kg + 0.5, speed, vc)
    # In a fast descent the rotor can windmill (momentum theory's induced power clamps at
    # zero), where mass no longer costs power; level flight and climbs always pay for it.
    assert heavier > p if vc >= 0 else heavier >= p


# ---- the mission core's plan -------------------------------------------------------------
def test_a_mission_plan_is_priced_like_the_same_delivery_in_plain_numbers() -> None:
    from companion.config import FlightConfig
    from companion.geo import offset
    from companion.mission.plan import delivery_plan

    home = DEFAULT_HOME[0], DEFAULT_HOME[1]
    flight = FlightConfig()
    plan = delivery_plan("m1", offset(*home, 500.0, 45.0), flight)
    legs = legs_from_mission(plan, home, {"m1": PARCEL_KG})
    kinds = [leg.kind for leg in legs]
    assert kinds[:3] == [LegKind.TAKEOFF, LegKind.TRANSIT, LegKind.DESCENT]
    assert kinds[-2:] == [LegKind.RETURN, LegKind.LAND]
    assert legs[1].distance_m == pytest.approx(500.0, rel=1e-3)
    assert legs[1].track_deg == pytest.approx(45.0, abs=0.1)
    priced = EnergyModel(SITL_COPTER).plan(legs)
    expected = EnergyModel(SITL_COPTER).plan(
        delivery_legs(
            500.0,
            cruise_alt_m=flight.cruise_alt_m,
            handover_alt_m=flight.handover_alt_m,
            handover_s=flight.release_hold_s,
            parcel_kg=PARCEL_KG,
        )
    )
    assert priced.charge_mah == pytest.approx(expected.charge_mah, rel=0.01)
    with pytest.raises(EnergyInputError, match=r"no parcel mass for drops \['m1'\]"):
        legs_from_mission(plan, home, {})


def test_a_wait_hovers_until_its_time_after_take_off_and_not_longer() -> None:
    model = EnergyModel(SITL_COPTER)
    start = model.plan([takeoff(30.0)])
    early = model.plan([takeoff(30.0), wait_until(start.time_s + 40.0, label="window")])
    assert early.legs[1].time_s == pytest.approx(40.0)
    assert early.legs[1].charge_mah == pytest.approx(model.leg(hover(40.0)).charge_mah)
    late = model.plan([takeoff(30.0), transit(2000.0), wait_until(30.0)])
    assert late.legs[2].time_s == 0.0 and late.legs[2].charge_mah == 0.0
    with pytest.raises(EnergyInputError, match="a wait is priced within a plan"):
        model.leg(wait_until(30.0))
