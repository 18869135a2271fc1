//! The authored material of TravelGym: for each travel aspect, the option fields the database shows, the
//! schema text that describes them, and the preference subcategories a user may hold (each with its concept
//! keywords for the scripted judge, the question the expert asks, and one or more concrete preferences with
//! their implicit elicitation statements and the option field they constrain). Also the cities, trip purposes
//! and sentence templates the scenario generator draws from. All text is this project's own.

use super::Aspect;

/// How a preference constrains an option.
#[derive(Clone, Copy, Debug)]
pub enum Req {
    /// The list field `field` contains `tag` (satisfied) or lacks it (violated).
    Tag { field: &'static str, tag: &'static str },
    /// The scalar field `field` takes one of `good` (satisfied) or one of `bad` (violated).
    Value { field: &'static str, good: &'static [&'static str], bad: &'static [&'static str] },
}

/// One concrete preference of a subcategory.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub text: &'static str,
    /// What the user says to reveal the preference without stating it.
    pub implicit: &'static str,
    pub req: Req,
}

/// A preference subcategory of one aspect. `concept` names the topic across aspects (the scripted judge
/// counts topics by concept), `keywords` are the phrases that touch it.
#[derive(Clone, Copy, Debug)]
pub struct Subcat {
    pub concept: &'static str,
    pub keywords: &'static [&'static str],
    /// The expert's concrete question about this subcategory (it names the aspect).
    pub question: &'static str,
    pub variants: &'static [Variant],
}

#[derive(Clone, Copy, Debug)]
pub enum FieldKind {
    /// A random value from the list (placeholders `{origin}`, `{destination}`, `{city}`, `{hub}` filled in).
    Pool(&'static [&'static str]),
    /// A value from the subcategory whose preferences constrain this field.
    Sub,
    /// A list of tags: the fillers plus the tags of subcategories on this field, each present at random.
    Tags(&'static [&'static str]),
    /// The initials of another field's value plus three digits (flight numbers).
    Code(&'static str),
    Cost,
}

#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: FieldKind,
}

#[derive(Clone, Copy, Debug)]
pub struct AspectSpec {
    pub aspect: Aspect,
    pub schema: &'static str,
    pub fields: &'static [Field],
    pub cost: (u32, u32),
    pub subcats: &'static [Subcat],
}

// Concepts shared by several aspects use one keyword list, so that a question counts as one topic.
const WIFI: &[&str] = &["wifi", "wi-fi", "internet", "online", "connectivity"];
const RATING: &[&str] = &["rating", "ratings", "review", "reviews", "rated", "stars", "reputation", "score"];
const PETS: &[&str] = &["pet", "pets", "dog", "cat", "animal", "animals"];
const PARKING: &[&str] = &["parking", "park the car", "garage", "valet"];
const CHECK_IN: &[&str] =
    &["check-in", "check in", "front desk", "reception", "arrive late", "late arrival", "key handover", "keys"];
const OUTDOOR: &[&str] = &["outdoor", "outdoors", "outside", "patio", "terrace", "balcony", "open air", "al fresco"];
const CHILDREN: &[&str] = &[
    "kid",
    "kids",
    "child",
    "children",
    "toddler",
    "baby",
    "family-friendly",
    "family friendly",
    "car seat",
    "booster",
    "high chair",
];
const PROVIDER: &[&str] = &[
    "airline",
    "carrier",
    "frequent flyer",
    "alliance",
    "loyalty",
    "rental company",
    "rental agency",
    "agency",
    "brand",
    "membership",
];

const GOOD_RATING: &[&str] = &["4.6", "4.7", "4.8", "4.9"];
const BAD_RATING: &[&str] = &["3.5", "3.8", "4.0", "4.2", "4.3"];

const MORNING: &[&str] = &["depart 06:40, arrive 09:55", "depart 08:15, arrive 11:30", "depart 10:05, arrive 13:20"];
const EVENING: &[&str] =
    &["depart 17:35, arrive 20:50", "depart 19:20, arrive 22:35", "depart 21:50, arrive 01:05 (+1)"];
const NOT_MORNING: &[&str] = &[
    "depart 13:45, arrive 17:00",
    "depart 15:10, arrive 18:25",
    "depart 17:35, arrive 20:50",
    "depart 19:20, arrive 22:35",
    "depart 21:50, arrive 01:05 (+1)",
];
const NOT_EVENING: &[&str] = &[
    "depart 06:40, arrive 09:55",
    "depart 08:15, arrive 11:30",
    "depart 10:05, arrive 13:20",
    "depart 13:45, arrive 17:00",
    "depart 15:10, arrive 18:25",
];

const AIRLINES: &[&str] = &["Northstar Airways", "Bluewing Airlines", "Skyline Air", "Coral Jet", "Meridian Air"];
const CAR_COMPANIES: &[&str] =
    &["Rapid Rentals", "Sunway Car Hire", "Metro Motors", "Coastline Rent-a-Car", "Pinecrest Rentals"];

const FLIGHT: AspectSpec = AspectSpec {
    aspect: Aspect::Flight,
    schema: "Each flight option lists: id (the option id), path (the route with any stops), time (departure and \
arrival, local time), company (the airline), flight_number, cost (US dollars, one way, one passenger), amenities \
(what is on board) and service (booking and airport services).",
    fields: &[
        Field { name: "path", kind: FieldKind::Sub },
        Field { name: "time", kind: FieldKind::Sub },
        Field { name: "company", kind: FieldKind::Sub },
        Field { name: "flight_number", kind: FieldKind::Code("company") },
        Field { name: "cost", kind: FieldKind::Cost },
        Field {
            name: "amenities",
            kind: FieldKind::Tags(&["seatback entertainment", "power outlets", "complimentary snacks"]),
        },
        Field {
            name: "service",
            kind: FieldKind::Tags(&["online check-in", "mobile boarding pass", "seat selection"]),
        },
    ],
    cost: (120, 900),
    subcats: &[
        Subcat {
            concept: "stops",
            keywords: &[
                "layover",
                "layovers",
                "stopover",
                "nonstop",
                "non-stop",
                "direct flight",
                "connection",
                "connecting",
                "change planes",
                "stops",
            ],
            question: "For the flight, are you fine with a layover, or does it have to be nonstop?",
            variants: &[Variant {
                text: "a nonstop flight with no layovers",
                implicit: "The last time I had to change planes my suitcase never showed up, so I'd rather board once and get off at the other end.",
                req: Req::Value {
                    field: "path",
                    good: &["{origin} → {destination} (nonstop)"],
                    bad: &[
                        "{origin} → {hub} → {destination} (1 stop)",
                        "{origin} → {hub} → {destination} (1 stop, overnight)",
                    ],
                },
            }],
        },
        Subcat {
            concept: "departure time",
            keywords: &[
                "departure time",
                "depart",
                "departure",
                "departing",
                "morning",
                "evening",
                "afternoon",
                "red-eye",
                "what time",
                "time of day",
                "take off",
                "takeoff",
            ],
            question: "What time of day would you like the flight to depart?",
            variants: &[
                Variant {
                    text: "a morning departure, before noon",
                    implicit: "I want to land with most of the day still ahead of me so I can settle in before dinner.",
                    req: Req::Value { field: "time", good: MORNING, bad: NOT_MORNING },
                },
                Variant {
                    text: "an evening departure, after 5 pm",
                    implicit: "I'm tied up in meetings until late afternoon that day, so I can't get to the airport any earlier.",
                    req: Req::Value { field: "time", good: EVENING, bad: NOT_EVENING },
                },
            ],
        },
        Subcat {
            concept: "provider",
            keywords: PROVIDER,
            question: "Do you have a preferred airline or frequent flyer program for this flight?",
            variants: &[
                Variant {
                    text: "flying with Northstar Airways",
                    implicit: "I've been collecting Northstar points for years and I'm only a couple of trips away from the next status tier.",
                    req: Req::Value {
                        field: "company",
                        good: &["Northstar Airways"],
                        bad: &["Bluewing Airlines", "Skyline Air", "Coral Jet", "Meridian Air"],
                    },
                },
                Variant {
                    text: "flying with Bluewing Airlines",
                    implicit: "My employer has a corporate deal with Bluewing, and booking anyone else needs a special approval I won't get in time.",
                    req: Req::Value {
                        field: "company",
                        good: &["Bluewing Airlines"],
                        bad: &["Northstar Airways", "Skyline Air", "Coral Jet", "Meridian Air"],
                    },
                },
            ],
        },
        Subcat {
            concept: "wifi",
            keywords: WIFI,
            question: "Will you need Wi-Fi during the flight?",
            variants: &[Variant {
                text: "in-flight Wi-Fi",
                implicit: "I have a report due the day I travel, so I can't afford to be cut off for the whole journey.",
                req: Req::Tag { field: "amenities", tag: "Wi-Fi" },
            }],
        },
        Subcat {
            concept: "legroom",
            keywords: &["legroom", "leg room", "cramped", "roomy", "extra space", "more space", "seat pitch"],
            question: "Is extra legroom important to you on the flight?",
            variants: &[Variant {
                text: "a seat with extra legroom",
                implicit: "I'm six foot five, and on my last trip my knees were pressed into the seat in front for hours.",
                req: Req::Tag { field: "amenities", tag: "extra legroom" },
            }],
        },
        Subcat {
            concept: "baggage",
            keywords: &[
                "baggage",
                "luggage",
                "bag",
                "bags",
                "suitcase",
                "suitcases",
                "checked bag",
                "check a bag",
                "carry-on",
            ],
            question: "How much luggage are you bringing on the flight, do you need a checked bag?",
            variants: &[Variant {
                text: "a free checked bag",
                implicit: "I'm hauling a huge suitcase full of presents for my relatives.",
                req: Req::Tag { field: "amenities", tag: "free checked bag" },
            }],
        },
        Subcat {
            concept: "meal",
            keywords: &["meal", "meals", "in-flight food", "food on board", "dietary", "diet", "vegetarian", "vegan"],
            question: "Do you have any dietary needs for the meal on the flight?",
            variants: &[Variant {
                text: "a vegetarian meal served on board",
                implicit: "I haven't eaten meat in ten years, and the food at airports is always hit or miss.",
                req: Req::Tag { field: "amenities", tag: "vegetarian meal" },
            }],
        },
        Subcat {
            concept: "cancellation",
            keywords: &[
                "cancel",
                "cancellation",
                "refund",
                "refundable",
                "flexible ticket",
                "change the date",
                "rebook",
            ],
            question: "Do you need a flight ticket that you can cancel for free?",
            variants: &[Variant {
                text: "free cancellation",
                implicit: "My manager still hasn't signed off on this trip, so the whole thing could fall through.",
                req: Req::Tag { field: "service", tag: "free cancellation" },
            }],
        },
        Subcat {
            concept: "lounge",
            keywords: &["lounge", "lounges", "before boarding", "waiting area"],
            question: "Would airport lounge access matter to you for this flight?",
            variants: &[Variant {
                text: "airport lounge access",
                implicit: "I like a quiet corner where I can work and get a decent coffee before I board.",
                req: Req::Tag { field: "service", tag: "lounge access" },
            }],
        },
        Subcat {
            concept: "pets",
            keywords: PETS,
            question: "Will you bring a pet with you on the flight?",
            variants: &[Variant {
                text: "a small pet allowed in the cabin",
                implicit: "My little dog Biscuit comes everywhere with me, and she is far too nervous to travel in the hold.",
                req: Req::Tag { field: "service", tag: "pet in cabin allowed" },
            }],
        },
    ],
};

const ROOMS: &[&str] = &[
    "King room, ocean view",
    "Queen room, water view",
    "King room, skyline view",
    "Double room, high floor with skyline view",
    "King room, courtyard view",
    "Queen room, street view",
    "Twin room, no view",
];

const HOTEL: AspectSpec = AspectSpec {
    aspect: Aspect::Hotel,
    schema: "Each hotel option lists: id (the option id), name, room (the room type and its view), cost (US dollars \
per night), rating (guest rating out of 5), amenities (facilities) and service (what the staff provide).",
    fields: &[
        Field {
            name: "name",
            kind: FieldKind::Pool(&[
                "The Grand Meridian",
                "Hotel Alder",
                "Parkside Suites",
                "The Foundry Hotel",
                "Linden House",
                "Hotel Corvara",
                "The Stanton",
                "Beacon Hill Hotel",
                "Hotel Marisol",
                "The Wexford",
            ]),
        },
        Field { name: "room", kind: FieldKind::Sub },
        Field { name: "cost", kind: FieldKind::Cost },
        Field { name: "rating", kind: FieldKind::Sub },
        Field { name: "amenities", kind: FieldKind::Tags(&["air conditioning", "in-room safe", "minibar"]) },
        Field { name: "service", kind: FieldKind::Tags(&["daily housekeeping", "luggage storage", "concierge"]) },
    ],
    cost: (80, 420),
    subcats: &[
        Subcat {
            concept: "view",
            keywords: &[
                "view",
                "views",
                "window",
                "overlook",
                "overlooking",
                "scenery",
                "sea",
                "ocean",
                "waterfront",
                "skyline",
            ],
            question: "What kind of view would you like from your hotel room?",
            variants: &[
                Variant {
                    text: "a room with a view of the water",
                    implicit: "I always wake up early to watch the sunrise over the sea.",
                    req: Req::Value {
                        field: "room",
                        good: &["King room, ocean view", "Queen room, water view"],
                        bad: &[
                            "King room, courtyard view",
                            "Queen room, street view",
                            "Twin room, no view",
                            "King room, skyline view",
                        ],
                    },
                },
                Variant {
                    text: "a room with a city-skyline view",
                    implicit: "Falling asleep to the city lights is half the fun of a trip for me.",
                    req: Req::Value {
                        field: "room",
                        good: &["King room, skyline view", "Double room, high floor with skyline view"],
                        bad: &[
                            "King room, courtyard view",
                            "Queen room, street view",
                            "Twin room, no view",
                            "King room, ocean view",
                        ],
                    },
                },
            ],
        },
        Subcat {
            concept: "rating",
            keywords: RATING,
            question: "How much do guest ratings matter to you for the hotel?",
            variants: &[Variant {
                text: "a guest rating of at least 4.5",
                implicit: "The last hotel I booked looked lovely in the photos and turned out to be filthy, so now I only trust places other guests rave about.",
                req: Req::Value { field: "rating", good: GOOD_RATING, bad: BAD_RATING },
            }],
        },
        Subcat {
            concept: "breakfast",
            keywords: &["breakfast", "morning meal"],
            question: "Would you like breakfast included at the hotel?",
            variants: &[Variant {
                text: "free breakfast included",
                implicit: "I'm useless until I've eaten, and I don't want to wander a strange city looking for food at seven in the morning.",
                req: Req::Tag { field: "amenities", tag: "free breakfast" },
            }],
        },
        Subcat {
            concept: "fitness",
            keywords: &["gym", "fitness", "workout", "work out", "exercise", "treadmill"],
            question: "Do you need a fitness center at the hotel?",
            variants: &[Variant {
                text: "an on-site fitness center",
                implicit: "I'm training for a marathon and can't skip my morning sessions on the treadmill.",
                req: Req::Tag { field: "amenities", tag: "fitness center" },
            }],
        },
        Subcat {
            concept: "pool",
            keywords: &["pool", "swim", "swimming"],
            question: "Would you like the hotel to have a swimming pool?",
            variants: &[Variant {
                text: "a swimming pool",
                implicit: "My kids will want to splash around after a long day of sightseeing.",
                req: Req::Tag { field: "amenities", tag: "swimming pool" },
            }],
        },
        Subcat {
            concept: "parking",
            keywords: PARKING,
            question: "Will you need parking at the hotel?",
            variants: &[Variant {
                text: "free on-site parking",
                implicit: "I'll have a car with me, and city garages charge a fortune every night.",
                req: Req::Tag { field: "amenities", tag: "free parking" },
            }],
        },
        Subcat {
            concept: "wifi",
            keywords: WIFI,
            question: "Do you need Wi-Fi in your hotel room?",
            variants: &[Variant {
                text: "free Wi-Fi in the room",
                implicit: "I'll be on video calls with my team every evening of the trip.",
                req: Req::Tag { field: "amenities", tag: "free Wi-Fi" },
            }],
        },
        Subcat {
            concept: "shuttle",
            keywords: &["shuttle", "airport transfer", "transfer from the airport", "ride from the airport"],
            question: "Would an airport shuttle from the hotel be useful to you?",
            variants: &[Variant {
                text: "a free airport shuttle",
                implicit: "I really don't want to figure out the public transport with all my bags in a city I don't know.",
                req: Req::Tag { field: "service", tag: "airport shuttle" },
            }],
        },
        Subcat {
            concept: "pets",
            keywords: PETS,
            question: "Are you bringing a pet that will stay with you at the hotel?",
            variants: &[Variant {
                text: "a pet-friendly hotel",
                implicit: "Our golden retriever comes on every trip with us.",
                req: Req::Tag { field: "service", tag: "pets allowed" },
            }],
        },
        Subcat {
            concept: "check-in",
            keywords: CHECK_IN,
            question: "Will you be checking in at the hotel late at night?",
            variants: &[Variant {
                text: "a 24-hour front desk",
                implicit: "My flight gets in after midnight, so I'll be turning up at a very odd hour.",
                req: Req::Tag { field: "service", tag: "24-hour front desk" },
            }],
        },
    ],
};

const CUISINES: &[&str] = &["Italian", "Japanese", "Mexican", "Indian", "Thai", "French"];

const RESTAURANT: AspectSpec = AspectSpec {
    aspect: Aspect::Restaurant,
    schema: "Each restaurant option lists: id (the option id), name, cuisine, cost (US dollars per person), rating \
(guest rating out of 5), features (what the place offers) and service (how it takes guests and payments).",
    fields: &[
        Field {
            name: "name",
            kind: FieldKind::Pool(&[
                "The Copper Table",
                "Juniper Room",
                "Maple & Main",
                "The Blue Door",
                "Lantern House",
                "Saltbox Kitchen",
                "Willow Street Eatery",
                "The Gilded Fork",
                "Ember",
                "Harvest Hall",
            ]),
        },
        Field { name: "cuisine", kind: FieldKind::Sub },
        Field { name: "cost", kind: FieldKind::Cost },
        Field { name: "rating", kind: FieldKind::Sub },
        Field { name: "features", kind: FieldKind::Tags(&["takeout", "full bar", "private dining room"]) },
        Field { name: "service", kind: FieldKind::Tags(&["card payments", "happy hour"]) },
    ],
    cost: (18, 120),
    subcats: &[
        Subcat {
            concept: "cuisine",
            keywords: &[
                "cuisine",
                "kind of food",
                "type of food",
                "sort of food",
                "dishes",
                "italian",
                "japanese",
                "mexican",
                "indian",
                "thai",
                "french",
                "craving",
            ],
            question: "What kind of food or cuisine would you like at the restaurant?",
            variants: &[
                Variant {
                    text: "Italian food",
                    implicit: "I've been daydreaming about a plate of fresh handmade pasta all week.",
                    req: Req::Value {
                        field: "cuisine",
                        good: &["Italian"],
                        bad: &["Japanese", "Mexican", "Indian", "Thai", "French"],
                    },
                },
                Variant {
                    text: "Japanese food",
                    implicit: "Nothing makes me happier than really fresh sushi.",
                    req: Req::Value {
                        field: "cuisine",
                        good: &["Japanese"],
                        bad: &["Italian", "Mexican", "Indian", "Thai", "French"],
                    },
                },
                Variant {
                    text: "Mexican food",
                    implicit: "Honestly, I could eat tacos every single day.",
                    req: Req::Value {
                        field: "cuisine",
                        good: &["Mexican"],
                        bad: &["Italian", "Japanese", "Indian", "Thai", "French"],
                    },
                },
                Variant {
                    text: "Indian food",
                    implicit: "I love rich curries with plenty of spice.",
                    req: Req::Value {
                        field: "cuisine",
                        good: &["Indian"],
                        bad: &["Italian", "Japanese", "Mexican", "Thai", "French"],
                    },
                },
            ],
        },
        Subcat {
            concept: "dietary",
            keywords: &["vegetarian", "vegan", "gluten", "dietary", "diet", "allergy", "allergies", "allergic", "meat"],
            question: "Does anyone in your party have dietary needs I should consider for the restaurant?",
            variants: &[
                Variant {
                    text: "vegetarian dishes on the menu",
                    implicit: "My partner stopped eating meat last year, and I want a place where they have real choices.",
                    req: Req::Tag { field: "features", tag: "vegetarian options" },
                },
                Variant {
                    text: "gluten-free options",
                    implicit: "My daughter has celiac disease, so we have to be careful with anything made from wheat.",
                    req: Req::Tag { field: "features", tag: "gluten-free options" },
                },
            ],
        },
        Subcat {
            concept: "outdoor",
            keywords: OUTDOOR,
            question: "Would you like to sit outdoors at the restaurant?",
            variants: &[Variant {
                text: "outdoor seating",
                implicit: "If the evening is warm, I'd hate to be stuck indoors.",
                req: Req::Tag { field: "features", tag: "outdoor seating" },
            }],
        },
        Subcat {
            concept: "rating",
            keywords: RATING,
            question: "How much do reviews and ratings matter to you for the restaurant?",
            variants: &[Variant {
                text: "a rating of at least 4.5",
                implicit: "It's our anniversary dinner, so the food really has to be outstanding.",
                req: Req::Value { field: "rating", good: GOOD_RATING, bad: BAD_RATING },
            }],
        },
        Subcat {
            concept: "reservation",
            keywords: &["reservation", "reservations", "reserve", "book a table", "walk-in", "wait in line", "queue"],
            question: "Do you need to be able to reserve a table at the restaurant?",
            variants: &[Variant {
                text: "a place that takes reservations",
                implicit: "There will be eight of us, and I don't want everyone standing around waiting for a table.",
                req: Req::Tag { field: "service", tag: "accepts reservations" },
            }],
        },
        Subcat {
            concept: "children",
            keywords: CHILDREN,
            question: "Will there be children with you at the restaurant?",
            variants: &[Variant {
                text: "a kids' menu",
                implicit: "My two little ones are extremely picky and only eat very plain things.",
                req: Req::Tag { field: "features", tag: "kids' menu" },
            }],
        },
        Subcat {
            concept: "accessibility",
            keywords: &["wheelchair", "accessible", "accessibility", "step-free", "mobility", "ramp"],
            question: "Does the restaurant need to be wheelchair accessible?",
            variants: &[Variant {
                text: "wheelchair access",
                implicit: "My father uses a wheelchair these days, and steps are a real problem for him.",
                req: Req::Tag { field: "features", tag: "wheelchair accessible" },
            }],
        },
        Subcat {
            concept: "music",
            keywords: &["music", "live music", "band", "entertainment", "atmosphere", "ambience", "ambiance"],
            question: "Would you enjoy live music at the restaurant?",
            variants: &[Variant {
                text: "live music",
                implicit: "A dinner feels special to me when there's a band playing softly in the background.",
                req: Req::Tag { field: "features", tag: "live music" },
            }],
        },
    ],
};

const APARTMENT: AspectSpec = AspectSpec {
    aspect: Aspect::Apartment,
    schema: "Each apartment option lists: id (the option id), name, layout (bedrooms and bathrooms), cost (US dollars \
per night), rating (guest rating out of 5), amenities (what the home has) and rules (the host's house rules and \
arrangements).",
    fields: &[
        Field {
            name: "name",
            kind: FieldKind::Pool(&[
                "Bright downtown apartment",
                "Quiet residential flat",
                "Modern corner unit",
                "Classic brick walk-up",
                "Garden-level home",
                "Renovated loft",
                "Sunny top-floor flat",
                "Cozy townhouse unit",
            ]),
        },
        Field { name: "layout", kind: FieldKind::Sub },
        Field { name: "cost", kind: FieldKind::Cost },
        Field { name: "rating", kind: FieldKind::Sub },
        Field { name: "amenities", kind: FieldKind::Tags(&["hair dryer", "iron", "smart TV"]) },
        Field { name: "rules", kind: FieldKind::Tags(&["no smoking", "no parties", "quiet hours after 10 pm"]) },
    ],
    cost: (70, 380),
    subcats: &[
        Subcat {
            concept: "bedrooms",
            keywords: &["bedroom", "bedrooms", "beds", "sleeping arrangements", "layout"],
            question: "How many bedrooms do you need in the apartment?",
            variants: &[Variant {
                text: "at least two bedrooms",
                implicit: "My sister and her husband are coming along, and we each need our own room to sleep in.",
                req: Req::Value {
                    field: "layout",
                    good: &["2 bedrooms, 1 bathroom", "3 bedrooms, 2 bathrooms"],
                    bad: &["studio, 1 bathroom", "1 bedroom, 1 bathroom"],
                },
            }],
        },
        Subcat {
            concept: "kitchen",
            keywords: &["kitchen", "cook", "cooking", "stove", "groceries", "self-catering"],
            question: "Do you need a kitchen in the apartment?",
            variants: &[Variant {
                text: "a full kitchen",
                implicit: "I'd like to cook most of our meals ourselves to keep costs down.",
                req: Req::Tag { field: "amenities", tag: "full kitchen" },
            }],
        },
        Subcat {
            concept: "laundry",
            keywords: &["laundry", "washer", "washing machine", "dryer", "wash clothes"],
            question: "Will you need a washing machine in the apartment?",
            variants: &[Variant {
                text: "a washer and dryer",
                implicit: "I'm packing light and will have to wash clothes halfway through the stay.",
                req: Req::Tag { field: "amenities", tag: "washer and dryer" },
            }],
        },
        Subcat {
            concept: "workspace",
            keywords: &["workspace", "desk", "work from", "working remotely", "remote work", "office", "laptop"],
            question: "Do you need a proper desk or workspace in the apartment?",
            variants: &[Variant {
                text: "a dedicated workspace",
                implicit: "I'll be working remotely for part of the trip and need a real desk, not the sofa.",
                req: Req::Tag { field: "amenities", tag: "dedicated workspace" },
            }],
        },
        Subcat {
            concept: "outdoor",
            keywords: OUTDOOR,
            question: "Would you like some outdoor space, like a balcony, at the apartment?",
            variants: &[Variant {
                text: "a private balcony",
                implicit: "My favourite part of any morning is sipping coffee in the fresh air.",
                req: Req::Tag { field: "amenities", tag: "private balcony" },
            }],
        },
        Subcat {
            concept: "pets",
            keywords: PETS,
            question: "Will a pet be staying with you in the apartment?",
            variants: &[Variant {
                text: "pets allowed",
                implicit: "Our cat comes along because nobody can look after her while we're away.",
                req: Req::Tag { field: "rules", tag: "pets allowed" },
            }],
        },
        Subcat {
            concept: "check-in",
            keywords: CHECK_IN,
            question: "How would you like to check in at the apartment, and when will you arrive?",
            variants: &[Variant {
                text: "self check-in",
                implicit: "I'll be arriving at odd hours and don't want to arrange a meeting with anyone to get in.",
                req: Req::Tag { field: "rules", tag: "self check-in" },
            }],
        },
        Subcat {
            concept: "parking",
            keywords: PARKING,
            question: "Will you need parking at the apartment?",
            variants: &[Variant {
                text: "free parking",
                implicit: "We'll have a car, and street spots in that neighbourhood are impossible to find.",
                req: Req::Tag { field: "amenities", tag: "free parking" },
            }],
        },
        Subcat {
            concept: "air conditioning",
            keywords: &["air conditioning", "air-conditioning", "aircon", "temperature", "heat", "climate control"],
            question: "Is air conditioning important to you in the apartment?",
            variants: &[Variant {
                text: "air conditioning",
                implicit: "I can't sleep a wink when the bedroom is warm.",
                req: Req::Tag { field: "amenities", tag: "air conditioning" },
            }],
        },
        Subcat {
            concept: "rating",
            keywords: RATING,
            question: "How much do guest reviews matter to you for the apartment?",
            variants: &[Variant {
                text: "a guest rating of at least 4.5",
                implicit: "A friend of mine got stuck in a dreadful rental last year, so I only trust places with glowing reviews.",
                req: Req::Value { field: "rating", good: GOOD_RATING, bad: BAD_RATING },
            }],
        },
    ],
};

const LARGE: &[&str] = &["SUV (Ford Explorer or similar)", "Minivan (Chrysler Pacifica or similar)"];
const SMALL: &[&str] = &["Compact (Toyota Corolla or similar)", "Economy (Kia Rio or similar)"];
const MIDSIZE: &str = "Midsize sedan (Honda Accord or similar)";

const RENTAL_CAR: AspectSpec = AspectSpec {
    aspect: Aspect::RentalCar,
    schema: "Each rental car option lists: id (the option id), company (the rental company), vehicle (the car class \
and a typical model), cost (US dollars per day), features (what the car has) and service (what the rental \
includes).",
    fields: &[
        Field { name: "company", kind: FieldKind::Sub },
        Field { name: "vehicle", kind: FieldKind::Sub },
        Field { name: "cost", kind: FieldKind::Cost },
        Field { name: "features", kind: FieldKind::Tags(&["Bluetooth audio", "USB charging", "cruise control"]) },
        Field {
            name: "service",
            kind: FieldKind::Tags(&["roadside assistance", "additional driver", "online check-in"]),
        },
    ],
    cost: (28, 140),
    subcats: &[
        Subcat {
            concept: "car size",
            keywords: &[
                "size",
                "suv",
                "minivan",
                "compact",
                "small car",
                "large car",
                "big car",
                "trunk",
                "passengers",
                "vehicle type",
                "type of car",
                "kind of car",
                "car class",
            ],
            question: "What size of rental car do you need?",
            variants: &[
                Variant {
                    text: "an SUV or a minivan with room for the whole family",
                    implicit: "There are five of us, plus a mountain of luggage.",
                    req: Req::Value {
                        field: "vehicle",
                        good: LARGE,
                        bad: &["Compact (Toyota Corolla or similar)", "Economy (Kia Rio or similar)", MIDSIZE],
                    },
                },
                Variant {
                    text: "a compact car",
                    implicit: "I'll be squeezing through narrow old streets and parallel parking a lot.",
                    req: Req::Value {
                        field: "vehicle",
                        good: SMALL,
                        bad: &["SUV (Ford Explorer or similar)", "Minivan (Chrysler Pacifica or similar)", MIDSIZE],
                    },
                },
            ],
        },
        Subcat {
            concept: "transmission",
            keywords: &["automatic", "manual", "stick", "stick shift", "transmission", "gearbox", "gears"],
            question: "Do you need an automatic transmission in the rental car?",
            variants: &[Variant {
                text: "an automatic transmission",
                implicit: "I never learned to drive stick.",
                req: Req::Tag { field: "features", tag: "automatic transmission" },
            }],
        },
        Subcat {
            concept: "fuel",
            keywords: &["electric", "hybrid", "fuel", "gas", "petrol", "emissions", "eco", "fuel economy", "carbon"],
            question: "Do you have a preference for a hybrid or electric rental car?",
            variants: &[Variant {
                text: "a hybrid or electric car",
                implicit: "I try hard to keep my carbon footprint small when I travel.",
                req: Req::Tag { field: "features", tag: "hybrid engine" },
            }],
        },
        Subcat {
            concept: "navigation",
            keywords: &["gps", "navigation", "sat nav", "directions", "maps"],
            question: "Would you like built-in GPS navigation in the rental car?",
            variants: &[Variant {
                text: "built-in GPS navigation",
                implicit: "I have a terrible sense of direction and my phone plan won't work over there.",
                req: Req::Tag { field: "features", tag: "built-in GPS" },
            }],
        },
        Subcat {
            concept: "children",
            keywords: CHILDREN,
            question: "Are you traveling with young children who need a car seat in the rental car?",
            variants: &[Variant {
                text: "a child safety seat",
                implicit: "We're traveling with our eighteen-month-old.",
                req: Req::Tag { field: "service", tag: "child seat available" },
            }],
        },
        Subcat {
            concept: "mileage",
            keywords: &["mileage", "distance", "long drive", "long drives", "road trip", "kilometers", "how far"],
            question: "How far do you plan to drive the rental car, do you need unlimited mileage?",
            variants: &[Variant {
                text: "unlimited mileage",
                implicit: "We're planning long drives out to the national parks.",
                req: Req::Tag { field: "service", tag: "unlimited mileage" },
            }],
        },
        Subcat {
            concept: "insurance",
            keywords: &["insurance", "coverage", "damage", "accident", "protection", "deductible"],
            question: "Do you want full insurance included with the rental car?",
            variants: &[Variant {
                text: "full insurance coverage included",
                implicit: "I scraped a rental once and the repair bill was a nightmare.",
                req: Req::Tag { field: "service", tag: "full insurance included" },
            }],
        },
        Subcat {
            concept: "pickup",
            keywords: &["pick up", "pickup", "pick-up", "collect the car", "airport location", "where to get the car"],
            question: "Where would you like to pick up the rental car?",
            variants: &[Variant {
                text: "picking the car up at the airport",
                implicit: "I want to get off the plane and drive away without taking a taxi anywhere first.",
                req: Req::Tag { field: "service", tag: "airport pickup" },
            }],
        },
        Subcat {
            concept: "provider",
            keywords: PROVIDER,
            question: "Do you have a preferred rental company or membership for the car?",
            variants: &[Variant {
                text: "renting from Rapid Rentals",
                implicit: "I have a Rapid Rentals membership card that lets me skip the counter entirely.",
                req: Req::Value {
                    field: "company",
                    good: &["Rapid Rentals"],
                    bad: &["Sunway Car Hire", "Metro Motors", "Coastline Rent-a-Car", "Pinecrest Rentals"],
                },
            }],
        },
    ],
};

/// The specs of all aspects, in `Aspect::ALL` order.
pub const SPECS: [AspectSpec; 5] = [FLIGHT, HOTEL, RESTAURANT, APARTMENT, RENTAL_CAR];

pub fn spec(aspect: Aspect) -> &'static AspectSpec {
    match aspect {
        Aspect::Flight => &SPECS[0],
        Aspect::Hotel => &SPECS[1],
        Aspect::Restaurant => &SPECS[2],
        Aspect::Apartment => &SPECS[3],
        Aspect::RentalCar => &SPECS[4],
    }
}

/// The airlines and rental companies, also used when no subcategory constrains the field.
pub fn provider_pool(aspect: Aspect) -> &'static [&'static str] {
    match aspect {
        Aspect::RentalCar => CAR_COMPANIES,
        _ => AIRLINES,
    }
}

/// The scalar values a `Sub` field can show when no preference constrains it.
pub fn sub_pool(aspect: Aspect, field: &str) -> &'static [&'static str] {
    match (aspect, field) {
        (Aspect::Flight, "time") => &[
            "depart 06:40, arrive 09:55",
            "depart 08:15, arrive 11:30",
            "depart 10:05, arrive 13:20",
            "depart 13:45, arrive 17:00",
            "depart 15:10, arrive 18:25",
            "depart 17:35, arrive 20:50",
            "depart 19:20, arrive 22:35",
            "depart 21:50, arrive 01:05 (+1)",
        ],
        (Aspect::Flight, "path") => &[
            "{origin} → {destination} (nonstop)",
            "{origin} → {hub} → {destination} (1 stop)",
            "{origin} → {hub} → {destination} (1 stop, overnight)",
        ],
        (Aspect::Flight, "company") | (Aspect::RentalCar, "company") => provider_pool(aspect),
        (Aspect::Hotel, "room") => ROOMS,
        (_, "rating") => &["3.5", "3.8", "4.0", "4.2", "4.3", "4.6", "4.7", "4.8", "4.9"],
        (Aspect::Restaurant, "cuisine") => CUISINES,
        (Aspect::Apartment, "layout") => {
            &["studio, 1 bathroom", "1 bedroom, 1 bathroom", "2 bedrooms, 1 bathroom", "3 bedrooms, 2 bathrooms"]
        }
        (Aspect::RentalCar, "vehicle") => &[
            "Compact (Toyota Corolla or similar)",
            "Economy (Kia Rio or similar)",
            MIDSIZE,
            "SUV (Ford Explorer or similar)",
            "Minivan (Chrysler Pacifica or similar)",
        ],
        _ => &["standard"],
    }
}

/// Canonical city names with the spellings a search query may use (lowercase, whole words).
pub const CITIES: &[(&str, &[&str])] = &[
    ("New York City", &["new york city", "new york", "nyc", "ny"]),
    ("Los Angeles", &["los angeles", "la", "lax"]),
    ("San Francisco", &["san francisco", "sf", "sfo"]),
    ("Chicago", &["chicago"]),
    ("Miami", &["miami"]),
    ("Seattle", &["seattle"]),
    ("Boston", &["boston"]),
    ("Denver", &["denver"]),
    ("Austin", &["austin"]),
    ("Las Vegas", &["las vegas", "vegas"]),
    ("Orlando", &["orlando"]),
    ("Washington, D.C.", &["washington dc", "washington d c", "washington", "dc", "d c"]),
    ("London", &["london"]),
    ("Paris", &["paris"]),
    ("Tokyo", &["tokyo"]),
    ("Rome", &["rome"]),
    ("Barcelona", &["barcelona"]),
    ("Honolulu", &["honolulu"]),
    ("Toronto", &["toronto"]),
    ("Lisbon", &["lisbon"]),
];

/// Trip destinations and home cities (indices into `CITIES`); hubs for connecting flights come from the rest.
pub const HUBS: &[&str] = &["Chicago", "Denver", "Dallas", "Atlanta", "Charlotte", "Frankfurt", "Amsterdam"];

pub const PURPOSES: &[&str] = &[
    "a business trip",
    "a family vacation",
    "a long weekend getaway",
    "a friend's wedding",
    "a work conference",
    "a visit to relatives",
    "an anniversary trip",
    "a sightseeing holiday",
];

pub const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Sentence templates for the user's first message, per aspect. Placeholders: `{origin}`, `{city}`, `{date}`
/// (one day), `{start}` and `{end}` (a stay).
pub fn request_templates(aspect: Aspect) -> &'static [&'static str] {
    match aspect {
        Aspect::Flight => &[
            "I need a one-way flight from {origin} to {city} on {date}.",
            "I'm flying one-way from {origin} to {city} on {date}.",
            "Please find me a one-way flight from {origin} to {city} on {date}.",
        ],
        Aspect::Hotel => &[
            "I need a hotel in {city} from {start} to {end}.",
            "I'll stay at a hotel in {city} from {start} to {end}.",
            "I'm looking for a hotel in {city}, checking in on {start} and out on {end}.",
        ],
        Aspect::Apartment => &[
            "I want to rent an apartment in {city} from {start} to {end}.",
            "I'd like to stay in an apartment in {city} from {start} to {end}.",
        ],
        Aspect::RentalCar => &[
            "I'd like to rent a car in {city} from {start} to {end}.",
            "I need a rental car in {city}, picking it up on {start} and returning it on {end}.",
        ],
        Aspect::Restaurant => &[
            "I also want to have dinner at a restaurant in {city} on {date}.",
            "I plan to eat at a restaurant in {city} on {date}.",
            "Please also find a restaurant in {city} for {date}.",
        ],
    }
}
