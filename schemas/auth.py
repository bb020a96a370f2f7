"""Who a caller is: the roles and the JWT claims every service checks."""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from schemas.ids import EntityId


class Role(StrEnum):
    """Who a token's subject is: a driver, a customer, a dispatcher, or ops."""

    DRIVER = "driver"
    CUSTOMER = "customer"
    DISPATCHER = "dispatcher"
    OPS = "ops"


class Principal(BaseModel):
    """The verified identity behind a request: `sub` is the driver/customer/... id."""

    model_config = ConfigDict(frozen=True)

    sub: EntityId
    role: Role

    @property
    def key(self) -> str:
        """One string per principal (a customer and a driver may share an id)."""
        return f"{self.role.value}:{self.sub}"


# The token's audience and issuer are part of the contract: every service checks both.
JWT_AUDIENCE = "telemetry"
JWT_ISSUER = "telemetry-auth"
