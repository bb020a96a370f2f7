"""GPS devices registered to drivers (docs/devices.md): the `devices.v1` record, keyed by
the device's id; a record without a value removes the device."""

from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.ids import EntityId

# A device's id is what it sends as its identifier (Traccar Client's, a tracker's IMEI):
# the same rule as every id of ours.
DeviceId = EntityId


class DeviceRecord(BaseModel):
    """The value of a `devices.v1` record: whose fixes the device sends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    driver_id: EntityId
    added_at: AwareDatetime
