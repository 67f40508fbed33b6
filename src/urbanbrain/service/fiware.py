"""Alerts as FIWARE `Alert` entities (Smart Data Models, NGSI-LD normalized form), so
a city platform built on FIWARE (an Orion-LD context broker) can take them as they are.

`category` is `traffic`; `subCategory` is `carAccident` (two or more vehicles stopped),
`carStopped` (one) or `trafficJam`. The place is given as the road segment (the SUMO
edge id) and the intersection it leads to; `location` (WGS84 GeoJSON) needs a
geo-referenced network and is left out otherwise rather than filled with local metres.
"""

from __future__ import annotations

from typing import Any

CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
SDM_CONTEXT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Alert/master/context.jsonld"


def _property(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


def alert_entity(alert: dict[str, Any], city: str) -> dict[str, Any]:
    """One stored alert as an NGSI-LD entity."""
    place = f"road segment {alert['edge']} towards intersection {alert['intersection']}"
    if alert.get("zone_from_m") is not None:
        place += f", between {alert['zone_from_m']:.0f} m and {alert['zone_to_m']:.0f} m from its start"
    entity = {
        "id": f"urn:ngsi-ld:Alert:urbanbrain:{city}:{alert['id']}",
        "type": "Alert",
        "category": _property("traffic"),
        "subCategory": _property(alert["type"]),
        "severity": _property(alert["severity"]),
        "description": _property(f"{alert['type']} on {place}; status {alert['status']}"),
        "dateIssued": _property({"@type": "DateTime", "@value": alert["created_at"]}),
        "alertSource": _property("urbanbrain"),
        "address": _property({"streetAddress": place, "addressLocality": city}),
    }
    if alert.get("resolved_at") is not None:
        entity["validTo"] = _property(alert["resolved_at"])
    entity["@context"] = [SDM_CONTEXT, CONTEXT]
    return entity
